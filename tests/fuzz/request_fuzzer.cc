// The raw request bytes of both RPCs, as gRPC hands them to the service:
// ParseRequest (server/api/request_parse.h) into WatchVideoTaskRequest and
// GetVideoTaskRequest, then ValidateTaskId, the path every request takes
// before anything else happens. Input: the first byte picks how the bytes
// are cut into slices (gRPC delivers a message in any number of them), the
// rest is the message. Checks: the slicing never changes the outcome; both
// request types (same field) agree; an id that passes is 1-128 characters of
// [A-Za-z0-9_-]; a refusal is INVALID_ARGUMENT with one of the fixed
// sentences (nothing of the id in it).
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "grpcpp/grpcpp.h"
#include "proto/videotask/v1/video_task.pb.h"
#include "server/api/request_parse.h"
#include "server/base/task_id.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

grpc::ByteBuffer Buffer(absl::string_view bytes, size_t piece) {
  std::vector<grpc::Slice> slices;
  if (piece == 0) piece = bytes.size() + 1;
  for (size_t i = 0; i < bytes.size(); i += piece) {
    const absl::string_view p = bytes.substr(i, piece);
    slices.emplace_back(p.data(), p.size());
  }
  return grpc::ByteBuffer(slices.data(), slices.size());
}

bool ValidId(const std::string& id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    if (!(absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-')) {
      return false;
    }
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  grpc_init();  // slices and byte buffers need the library initialised
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t piece = data[0] % 8;  // 0: one slice; else slices of 1-7 bytes
  const absl::string_view bytes = videotask::fuzz::AsView(data + 1, size - 1);

  videotask::v1::WatchVideoTaskRequest watch;
  const bool watch_ok = videotask::ParseRequest(Buffer(bytes, piece), &watch);
  videotask::v1::WatchVideoTaskRequest watch_whole;
  const bool whole_ok = videotask::ParseRequest(Buffer(bytes, 0), &watch_whole);
  FUZZ_CHECK(watch_ok == whole_ok, "slicing changed the parse");
  videotask::v1::GetVideoTaskRequest get;
  const bool get_ok = videotask::ParseRequest(Buffer(bytes, piece), &get);
  FUZZ_CHECK(get_ok == watch_ok, "Watch and Get requests parse differently");
  if (!watch_ok) return 0;
  FUZZ_CHECK(watch.id() == watch_whole.id() && watch.id() == get.id(), "ids differ");

  const absl::Status s = videotask::ValidateTaskId(watch.id());
  FUZZ_CHECK(s.ok() == ValidId(watch.id()), "ValidateTaskId disagrees with the rule");
  if (!s.ok()) {
    FUZZ_CHECK(s.code() == absl::StatusCode::kInvalidArgument, std::string(s.message()));
    // One of the fixed sentences (numbers aside): nothing of the id.
    std::string shape;
    for (char c : s.message()) {
      if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) shape.push_back(c);
    }
    FUZZ_CHECK(shape == "task id is empty" ||
                   shape == "task id is  characters long; the maximum is " ||
                   shape == "task id has a character outside [A-Za-z-_-] at offset ",
               "unexpected message: " + std::string(s.message()));
  }
  return 0;
}
