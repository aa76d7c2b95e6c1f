// Whether a host is loopback, for the plain-http rules: the sidecar sends
// the API key over plain http:// only to a loopback upstream (unless
// --allow_insecure_upstream), and the archiver follows plain http:// only to
// a loopback host.
//
// Loopback means the literal "localhost", an IPv4 literal in 127.0.0.0/8 or
// an IPv6 literal equal to ::1 (in any spelling). A name that merely starts
// with "127." (127.0.0.1.nip.io, 127.attacker.example) is a DNS name like any
// other and is not loopback; nor is "localhost." or "localhost.example".
#ifndef VIDEOTASK_SERVER_BASE_LOOPBACK_H_
#define VIDEOTASK_SERVER_BASE_LOOPBACK_H_

#include <string>

namespace videotask {

// `host` as it stands alone (no brackets), matched exactly: "localhost",
// "127.8.9.10", "::1"; not "LOCALHOST" nor "[::1]".
bool IsLoopbackHost(const std::string& host);

// `host` as in a URL: an IPv6 literal may be in brackets ("[::1]") and case
// does not matter ("LOCALHOST"); otherwise as IsLoopbackHost.
bool IsLoopbackAddress(const std::string& host);

}  // namespace videotask

#endif  // VIDEOTASK_SERVER_BASE_LOOPBACK_H_
