// CurlVendorCreateClient: the VendorCreateClient over libcurl, with the
// upstream client's conventions (CurlUpstreamClient::Options: base URL,
// connect timeout, CA file, user agent, body cap): the key from the
// ApiKeySource on every request as `Authorization: Bearer`, TLS peer and host
// verification always on, no redirects, CURLOPT_NOSIGNAL, proxies from the
// standard environment variables.
//
// Each create is one blocking request on the calling thread, on a fresh
// connection, and is never sent twice (libcurl's resend of a request whose
// connection died is stopped). Whether anything left is decided by libcurl's
// pre-request callback: a failure before it (DNS, connect, TLS, the key
// unavailable) is kNotSent; any failure after it is kUnknown. `timeout`
// bounds the whole request. Never logs; no message contains the key.
#ifndef VIDEOTASK_SERVER_CREATE_CURL_VENDOR_CREATE_H_
#define VIDEOTASK_SERVER_CREATE_CURL_VENDOR_CREATE_H_

#include <memory>
#include <string>

#include "server/base/clock.h"
#include "server/create/vendor_create.h"
#include "server/upstream/api_key.h"
#include "server/upstream/curl_upstream_client.h"

namespace videotask {

class CurlVendorCreateClient : public VendorCreateClient {
 public:
  // `options.base_url` as for the upstream client ("/{family}/videos" is
  // appended); `options.timeout` bounds each create. `clock` may be null.
  CurlVendorCreateClient(CurlUpstreamClient::Options options, std::shared_ptr<ApiKeySource> key,
                         Clock* clock);

  VendorCreateResult Create(const std::string& family, const std::string& body_json) override;

  // "{base_url}/{family}/videos".
  std::string CreateUrl(const std::string& family) const;

 private:
  const CurlUpstreamClient::Options options_;
  const std::shared_ptr<ApiKeySource> key_;
  Clock* const clock_;
};

}  // namespace videotask

#endif  // VIDEOTASK_SERVER_CREATE_CURL_VENDOR_CREATE_H_
