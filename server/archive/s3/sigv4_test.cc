// The SigV4 signer: AWS's published S3 examples, then real requests to the
// stand-in S3 (tests/testing/s3_standin.py), which recomputes each signature
// with botocore's S3SigV4Auth and refuses a mismatch as S3 does.
#include "server/archive/s3/sigv4.h"

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "server/archive/s3/http_call.h"
#include "tests/testing/s3_standin.h"

namespace videotask::s3 {
namespace {

using ::videotask::testing::S3Standin;

const AwsCredentials kExample = {"AKIAIOSFODNN7EXAMPLE",
                                 "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", ""};
const absl::Time kExampleTime = absl::FromCivil(absl::CivilSecond(2013, 5, 24), absl::UTCTimeZone());
constexpr char kEmptySha[] = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

std::string SignatureOf(const SignedRequest& s) {
  for (const auto& [k, v] : s.headers) {
    if (k == "Authorization") return v.substr(v.find("Signature=") + 10);
  }
  return "";
}

// AWS S3 API reference, "Signature calculations for the Authorization header:
// transferring payload in a single chunk", examples GET Object, GET Bucket
// Lifecycle and Get Bucket (List Objects); the same figures come out of
// botocore's S3SigV4Auth.
TEST(SigV4, AwsPublishedExamples) {
  RequestToSign get;
  get.method = "GET";
  get.host = "examplebucket.s3.amazonaws.com";
  get.encoded_path = "/test.txt";
  get.headers = {{"Range", "bytes=0-9"}};
  get.payload_sha256_hex = kEmptySha;
  SignedRequest s = SignS3Request(get, kExample, "us-east-1", kExampleTime);
  EXPECT_EQ(SignatureOf(s), "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
  bool found = false;
  for (const auto& [k, v] : s.headers) {
    if (k == "Authorization") {
      found = true;
      EXPECT_TRUE(absl::StrContains(
          v, "Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
             "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "));
    }
  }
  EXPECT_TRUE(found);

  RequestToSign lifecycle;
  lifecycle.method = "GET";
  lifecycle.host = "examplebucket.s3.amazonaws.com";
  lifecycle.encoded_path = "/";
  lifecycle.query = {{"lifecycle", ""}};
  lifecycle.payload_sha256_hex = kEmptySha;
  s = SignS3Request(lifecycle, kExample, "us-east-1", kExampleTime);
  EXPECT_EQ(s.canonical_query, "lifecycle=");
  EXPECT_EQ(SignatureOf(s), "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543");

  RequestToSign list = lifecycle;
  list.query = {{"prefix", "J"}, {"max-keys", "2"}};  // sorted by the signer
  s = SignS3Request(list, kExample, "us-east-1", kExampleTime);
  EXPECT_EQ(s.canonical_query, "max-keys=2&prefix=J");
  EXPECT_EQ(SignatureOf(s), "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7");
}

TEST(SigV4, SecretsStayOutOfHeadersTokenIsSent) {
  AwsCredentials temp = kExample;
  temp.session_token = "session-token-value";
  RequestToSign r;
  r.method = "PUT";
  r.host = "h";
  r.encoded_path = "/b/k";
  r.payload_sha256_hex = kEmptySha;
  const SignedRequest s = SignS3Request(r, temp, "eu-west-1", kExampleTime);
  bool token = false;
  for (const auto& [k, v] : s.headers) {
    EXPECT_FALSE(absl::StrContains(v, temp.secret_access_key)) << k;
    if (k == "X-Amz-Security-Token") token = v == temp.session_token;
    if (k == "Authorization") {
      EXPECT_TRUE(absl::StrContains(v, "x-amz-security-token"));
    }
  }
  EXPECT_TRUE(token);
}

TEST(SigV4, UriEncode) {
  EXPECT_EQ(UriEncode("a b/c+d~e_f.g-h", true), "a%20b/c%2Bd~e_f.g-h");
  EXPECT_EQ(UriEncode("a/b", false), "a%2Fb");
  EXPECT_EQ(UriEncode("\xc3\xa9", false), "%C3%A9");
}

// A PUT signed here and sent to the stand-in: status and S3 error code.
struct Outcome {
  long status = 0;
  std::string code;
};

Outcome Put(const S3Standin& standin, const AwsCredentials& creds, const std::string& key,
            const std::string& body, const HeaderList& extra = {}) {
  RequestToSign r;
  r.method = "PUT";
  const std::string endpoint = standin.S3Endpoint();
  r.host = endpoint.substr(std::string("http://").size());
  r.encoded_path = absl::StrCat("/videos/", UriEncode(key, true));
  r.headers = extra;
  r.payload_sha256_hex = Sha256Hex(body);
  const SignedRequest s = SignS3Request(r, creds, "us-east-1", absl::Now());
  HttpRequest h;
  h.method = "PUT";
  h.url = absl::StrCat(endpoint, r.encoded_path, s.canonical_query.empty() ? "" : "?",
                       s.canonical_query);
  h.headers = s.headers;
  h.body = body;
  HttpSession session;
  absl::StatusOr<HttpResponse> resp = session.Call(h);
  EXPECT_TRUE(resp.ok()) << resp.status();
  if (!resp.ok()) return {};
  return {resp->status, XmlText(resp->body, "Code")};
}

TEST(SigV4, BotocoreAcceptsOurSignatureAndRefusesAWrongSecret) {
  absl::StatusOr<std::unique_ptr<S3Standin>> standin = S3Standin::Start();
  ASSERT_TRUE(standin.ok()) << standin.status();
  const AwsCredentials good = {"AKIASTANDIN", "standin-secret-key", ""};
  // A key that needs encoding, a content type and metadata: all signed.
  Outcome o = Put(**standin, good, "prefix/a b+c=d.mp4", "video bytes",
                  {{"Content-Type", "video/mp4"}, {"x-amz-meta-sha256", "abc"}});
  EXPECT_EQ(o.status, 200) << o.code;
  nlohmann::json state = (*standin)->State();
  ASSERT_EQ(state["objects"].size(), 1u);
  EXPECT_EQ(state["objects"][0]["key"], "prefix/a b+c=d.mp4");
  EXPECT_EQ(state["objects"][0]["content_type"], "video/mp4");
  EXPECT_EQ(state["objects"][0]["meta"]["sha256"], "abc");

  AwsCredentials wrong = good;
  wrong.secret_access_key = "not-the-secret";
  o = Put(**standin, wrong, "k", "x");
  EXPECT_EQ(o.status, 403);
  EXPECT_EQ(o.code, "SignatureDoesNotMatch");
}

TEST(SigV4, SignedPayloadMustBeTheBody) {
  absl::StatusOr<std::unique_ptr<S3Standin>> standin = S3Standin::Start();
  ASSERT_TRUE(standin.ok()) << standin.status();
  const AwsCredentials good = {"AKIASTANDIN", "standin-secret-key", ""};
  RequestToSign r;
  r.method = "PUT";
  r.host = (*standin)->S3Endpoint().substr(7);
  r.encoded_path = "/videos/k";
  r.payload_sha256_hex = Sha256Hex("what was signed");
  const SignedRequest s = SignS3Request(r, good, "us-east-1", absl::Now());
  HttpRequest h;
  h.method = "PUT";
  h.url = (*standin)->S3Endpoint() + r.encoded_path;
  h.headers = s.headers;
  h.body = "what was sent";
  HttpSession session;
  absl::StatusOr<HttpResponse> resp = session.Call(h);
  ASSERT_TRUE(resp.ok()) << resp.status();
  EXPECT_EQ(resp->status, 400);
  EXPECT_EQ(XmlText(resp->body, "Code"), "XAmzContentSHA256Mismatch");
}

}  // namespace
}  // namespace videotask::s3
