// The simulated upstream's control API (/_sim/...), through its real HTTP
// server on loopback, as scripts and tests in other languages drive it.
// Input: byte 0 picks the request (PUT a task script, complete, fail,
// inject a fault, fetch a result, read the counts), then NUL-separated the
// task id (percent-encoded into the path) and the JSON body. Checks: every
// answer is one the API documents (204/200, 400 with a JSON error, 401/404
// for the vendor endpoint), never a 500 or a dropped connection, and
// /_sim/counts stays readable JSON. Injected faults are cleared at once
// (after their body was parsed), so no fault ever holds a request.
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "tests/fuzz/fuzz_util.h"
#include "tests/sim/sim_upstream.h"

namespace {

std::unique_ptr<videotask::sim::SimUpstream>* sim = nullptr;
httplib::Client* client = nullptr;

std::string PercentEncode(absl::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      absl::StrAppend(&out, "%", absl::Hex(c, absl::kZeroPad2));
    }
  }
  return out;
}

void CheckError(const httplib::Result& cr, const std::string& what) {
  httplib::Result& r = const_cast<httplib::Result&>(cr);  // operator-> is not const
  FUZZ_CHECK(r, what + ": no answer (" + httplib::to_string(r.error()) + ")");
  FUZZ_CHECK(r->status != 500, what + ": 500 " + r->get_header_value("EXCEPTION_WHAT"));
  if (r->status == 400) {
    const nlohmann::json j = nlohmann::json::parse(r->body, nullptr, false);
    FUZZ_CHECK(!j.is_discarded() && j.contains("error") && j["error"].contains("message") &&
                   j["error"]["message"].is_string(),
               what + ": 400 without a JSON error body");
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  videotask::sim::SimUpstream::Options options;
  options.threads = 2;
  auto started = videotask::sim::SimUpstream::Start(options);
  if (!started.ok()) {
    std::fprintf(stderr, "sim: %s\n", started.status().ToString().c_str());
    std::abort();
  }
  sim = new std::unique_ptr<videotask::sim::SimUpstream>(*std::move(started));
  client = new httplib::Client("127.0.0.1", (*sim)->port());
  client->set_keep_alive(true);
  client->set_tcp_nodelay(true);
  client->set_read_timeout(5, 0);
  client->set_connection_timeout(5, 0);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t op = data[0] % 6;
  const auto parts = videotask::fuzz::SplitNul(videotask::fuzz::AsView(data + 1, size - 1), 2);
  const std::string id = PercentEncode(parts[0]);
  const std::string body = parts.size() > 1 ? std::string(parts[1]) : "";
  const std::string task = "/_sim/tasks/" + id;
  std::string what;
  auto send = [&]() -> httplib::Result {
    switch (op) {
      case 0:
        what = "PUT " + task;
        return client->Put(task.c_str(), body, "application/json");
      case 1:
        what = "POST " + task + "/complete";
        return client->Post((task + "/complete").c_str(), body, "application/json");
      case 2:
        what = "POST " + task + "/fail";
        return client->Post((task + "/fail").c_str(), body, "application/json");
      case 3: {
        what = "POST /_sim/faults";
        httplib::Result r = client->Post("/_sim/faults", body, "application/json");
        CheckError(client->Delete("/_sim/faults"), "DELETE /_sim/faults");
        return r;
      }
      case 4: {
        what = "GET result " + id;
        httplib::Headers headers = {{"Authorization", "Bearer sim-key"}};
        return client->Get(("/kyyReactApiServer/v1/result/" + id).c_str(), headers);
      }
      default:
        what = "POST /_sim/reset";
        return client->Post("/_sim/reset", "", "application/json");
    }
  };
  httplib::Result r = send();
  CheckError(r, what);
  CheckError(r, what);
  httplib::Result counts = client->Get("/_sim/counts");
  CheckError(counts, "GET /_sim/counts");
  FUZZ_CHECK(counts->status == 200, "GET /_sim/counts: " + std::to_string(counts->status));
  FUZZ_CHECK(!nlohmann::json::parse(counts->body, nullptr, false).is_discarded(),
             "counts are not JSON");
  return 0;
}
