// videotask: command-line client of the videotask sidecar, for Airflow
// (BashOperator, KubernetesPodOperator), Argo container steps, scripts and
// humans.
//
//   videotask watch ID    one JSON object per event on stdout (JSON Lines)
//   videotask get ID      the task as JSON
//   videotask health      exit 0 when the sidecar is SERVING
//   videotask create --family=F --body=JSON|@FILE [--request_id=K] [--wait]
//                         creates a task exactly once per request_id and
//                         prints it as JSON (with --wait: the event lines, as
//                         watch does); without --request_id a random one is
//                         made and printed to stderr, to repeat the call
//                         safely with it
//
// Exit codes: 0 completed (or healthy, or created), 1 video failed, 2 usage
// or invalid id or request, 3 not found, 4 timed out with the sidecar
// reachable, 5 sidecar unreachable or unavailable after retries (for create:
// nothing was created), 6 upstream rejected credentials, 7 other error;
// create only: 8 refused (by the vendor, with its message), 9 outcome
// unknown (the vendor may have created it; the request_id will not send it
// again), 10 spend guard (--max_creates_per_hour) or the sidecar's key
// store full (the message says which), 11 request_id already
// used with another family or body, 12 creates not allowed on this sidecar.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "google/protobuf/util/json_util.h"
#include "plugin/client.h"
#include "server/base/command_line.h"
#include "server/base/task_id.h"
#include "server/create/create_request.h"

ABSL_FLAG(std::string, target, "",
          "Sidecar address (host:port or unix:PATH). Default: $VIDEOTASK_TARGET, else "
          "127.0.0.1:50051.");
ABSL_FLAG(absl::Duration, timeout, absl::ZeroDuration(),
          "Overall time limit (0: none for watch, 10s for get and health, 60s for create: "
          "longer than the sidecar's own 30s). When it passes: "
          "exit 4 if the sidecar was reachable (the task is not done), exit 5 with \"sidecar "
          "at ADDR unreachable for DUR\" if it never was.");
ABSL_FLAG(absl::Duration, give_up_after, absl::Seconds(60),
          "watch: exit 5 after an outage this long (no stream that brought a new status or "
          "lasted 10 s), counted from the start when the sidecar never answered.");
ABSL_FLAG(bool, quiet, false, "No human-readable lines on stderr.");
ABSL_FLAG(std::string, family, "", "create: the vendor's model family (e.g. videos, kyyvideo2).");
ABSL_FLAG(std::string, body, "",
          "create: the family's request body, a JSON object, inline or @FILE (@- for stdin).");
ABSL_FLAG(std::string, request_id, "",
          "create: the idempotency key (1-128 printable ASCII). Default: a random one, "
          "printed to stderr.");
ABSL_FLAG(bool, wait, false, "create: then watch the task to its end, as watch does.");

namespace {

using videotask::v1::VideoTask;
using videotask::v1::WatchVideoTaskResponse;

enum ExitCode {
  kCompleted = 0,
  kVideoFailed = 1,
  kUsage = 2,
  kNotFound = 3,
  kTimedOut = 4,
  kUnavailable = 5,
  kRejected = 6,
  kOther = 7,
  kRefused = 8,
  kOutcomeUnknown = 9,
  kSpendGuard = 10,
  kKeyConflict = 11,
  kCreateNotAllowed = 12,
};

int ExitFor(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
      return kUsage;
    case absl::StatusCode::kNotFound:
      return kNotFound;
    case absl::StatusCode::kDeadlineExceeded:
      return kTimedOut;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kResourceExhausted:
      return kUnavailable;
    case absl::StatusCode::kFailedPrecondition:
      return kRejected;
    default:
      return kOther;
  }
}

// A create's status: the sidecar has checked the request, so an
// INVALID_ARGUMENT from it is a refusal.
int CreateExitFor(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
      return kRefused;
    case absl::StatusCode::kAborted:
      return kOutcomeUnknown;
    case absl::StatusCode::kResourceExhausted:  // spend guard or key store full
      return kSpendGuard;
    case absl::StatusCode::kAlreadyExists:
      return kKeyConflict;
    case absl::StatusCode::kPermissionDenied:
      return kCreateNotAllowed;
    default:
      return ExitFor(status);
  }
}

std::string Json(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions opts;
  opts.always_print_primitive_fields = false;
  (void)google::protobuf::util::MessageToJsonString(m, &out, opts);
  return out;
}

std::string Short(videotask::v1::VideoTaskStatus s) {
  std::string name = videotask::v1::VideoTaskStatus_Name(s);
  const std::string prefix = "VIDEO_TASK_STATUS_";
  if (name.rfind(prefix, 0) == 0) name = name.substr(prefix.size());
  for (char& c : name) c = static_cast<char>(std::tolower(c));
  return name;
}

int Fail(const absl::Status& status, bool quiet, int code = -1) {
  if (!quiet || status.code() == absl::StatusCode::kInvalidArgument) {
    std::cerr << "videotask: " << absl::StatusCodeToString(status.code()) << ": "
              << status.message() << "\n";
  }
  return code >= 0 ? code : ExitFor(status);
}

// --body: inline JSON, @FILE or @- (stdin).
absl::StatusOr<std::string> ReadBody(const std::string& flag) {
  if (flag.empty() || flag[0] != '@') return flag;
  const std::string path = flag.substr(1);
  std::ifstream file;
  std::istream* in = &std::cin;
  if (path != "-") {
    file.open(path, std::ios::binary);
    if (!file) return absl::InvalidArgumentError(absl::StrCat("--body: cannot read ", path));
    in = &file;
  }
  std::string text;
  char buf[4096];
  while (in->read(buf, sizeof buf) || in->gcount() > 0) {
    text.append(buf, static_cast<size_t>(in->gcount()));
    if (text.size() > (1 << 20)) return absl::InvalidArgumentError("--body: larger than 1 MiB");
  }
  return text;
}

// A fresh idempotency key: "cli-" and 128 random bits in hex.
std::string RandomRequestId() {
  absl::BitGen gen;
  return absl::StrCat("cli-", absl::Hex(absl::Uniform<uint64_t>(gen), absl::kZeroPad16),
                      absl::Hex(absl::Uniform<uint64_t>(gen), absl::kZeroPad16));
}

int Usage() {
  std::cerr << "usage: videotask [--target=ADDR] [--timeout=DUR] [--give_up_after=DUR] "
               "[--quiet] watch ID | get ID | health | create --family=F --body=JSON|@FILE "
               "[--request_id=K] [--wait]\n";
  return kUsage;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "videotask watch ID | get ID | health | create --family=F --body=JSON|@FILE "
      "[--request_id=K] [--wait]\n"
      "Exit codes: 0 completed (or created), 1 video failed, 2 usage or invalid id or "
      "request, 3 not found, 4 timed out (sidecar reachable), 5 sidecar unreachable or "
      "unavailable (create: nothing created), 6 upstream rejected credentials, 7 other; "
      "create: 8 refused, 9 outcome unknown (may have been created), 10 spend guard or "
      "key store full, "
      "11 request_id used with another body, 12 creates not allowed here.");
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    if (arg == "--") break;
    if (arg == "-h" || arg == "--help" || arg == "-help" || arg == "--helpshort") {
      std::cout << absl::ProgramUsageMessage() << "\n\nFlags:\n";
      for (const char* name : {"target", "timeout", "give_up_after", "quiet", "family", "body",
                               "request_id", "wait"}) {
        const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
        std::cout << "  --" << name << " (default: \"" << flag->DefaultValue() << "\")\n      "
                  << flag->Help() << "\n";
      }
      return 0;
    }
  }
  // Flag mistakes are usage errors (exit 2), not absl's exit 1, which here
  // would read as "the video failed".
  if (absl::Status s = videotask::CheckCommandLineFlags(argc, argv); !s.ok()) {
    std::cerr << "videotask: " << s.message() << "\n";
    return Usage();
  }
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  std::string target = absl::GetFlag(FLAGS_target);
  if (target.empty()) {
    const char* env = std::getenv("VIDEOTASK_TARGET");
    target = env != nullptr && *env != '\0' ? env : "127.0.0.1:50051";
  }
  const bool quiet = absl::GetFlag(FLAGS_quiet);
  const absl::Duration timeout = absl::GetFlag(FLAGS_timeout);
  const absl::Duration give_up_after = absl::GetFlag(FLAGS_give_up_after);
  if (timeout < absl::ZeroDuration() || give_up_after <= absl::ZeroDuration()) {
    std::cerr << "videotask: --timeout must not be negative and --give_up_after must be positive\n";
    return Usage();
  }
  if (args.size() < 2) return Usage();
  const std::string command = args[1];
  auto client = videotask::VideoTaskClient::Create(target);
  const absl::Duration short_timeout = timeout > absl::ZeroDuration() ? timeout : absl::Seconds(10);

  if (command == "health") {
    if (args.size() != 2) return Usage();
    absl::Status st = client->Health(short_timeout);
    if (!st.ok()) {
      if (!quiet) std::cerr << "videotask: not healthy: " << st.message() << "\n";
      return kUnavailable;
    }
    if (!quiet) std::cerr << "videotask: sidecar at " << target << " is SERVING\n";
    return kCompleted;
  }
  std::string id;
  if (command == "create") {
    if (args.size() != 2) return Usage();
    absl::StatusOr<std::string> text = ReadBody(absl::GetFlag(FLAGS_body));
    if (!text.ok()) return Fail(text.status(), quiet);
    videotask::v1::CreateVideoTaskRequest req;
    req.set_family(absl::GetFlag(FLAGS_family));
    req.set_request_id(absl::GetFlag(FLAGS_request_id));
    const bool made_up = req.request_id().empty();
    if (made_up) req.set_request_id(RandomRequestId());
    if (!google::protobuf::util::JsonStringToMessage(*text, req.mutable_body()).ok()) {
      std::cerr << "videotask: --body must be a JSON object\n";
      return kUsage;
    }
    // Checked here too, so that a bad request is exit 2 even with the sidecar down.
    if (absl::StatusOr<videotask::PreparedCreate> p = videotask::PrepareCreate(req); !p.ok()) {
      std::cerr << "videotask: " << p.status().message() << "\n";
      return kUsage;
    }
    if (made_up) {
      std::cerr << "videotask: request_id " << req.request_id()
                << " (repeat with --request_id=" << req.request_id() << " to retry safely)\n";
    }
    absl::StatusOr<VideoTask> task =
        client->Create(req.request_id(), req.family(), req.body(),
                       timeout > absl::ZeroDuration() ? timeout : absl::Seconds(60));
    if (!task.ok()) return Fail(task.status(), quiet, CreateExitFor(task.status()));
    if (!absl::GetFlag(FLAGS_wait)) {
      std::cout << Json(*task) << std::endl;
      return kCompleted;
    }
    if (!quiet) std::cerr << "videotask: created " << task->id() << "\n";
    id = task->id();
  } else {
    if (args.size() != 3 || (command != "watch" && command != "get")) return Usage();
    id = args[2];
    // Checked here too, so that a bad id is exit 2 even with the sidecar down.
    if (absl::Status s = videotask::ValidateTaskId(id); !s.ok()) {
      std::cerr << "videotask: " << s.message() << "\n";
      return kUsage;
    }
  }

  if (command == "get") {
    absl::StatusOr<VideoTask> task = client->Get(id, short_timeout);
    if (!task.ok()) return Fail(task.status(), quiet);
    std::cout << Json(*task) << std::endl;
    return kCompleted;
  }

  const bool human = !quiet && isatty(STDERR_FILENO);
  videotask::AwaitOptions options;
  if (timeout > absl::ZeroDuration()) options.timeout = timeout;
  options.give_up_after = give_up_after;
  options.on_event = [human](const WatchVideoTaskResponse& e) {
    std::cout << Json(e) << std::endl;  // flushed: consumers read line by line
    if (human) {
      std::string line = absl::StrCat(
          WatchVideoTaskResponse::EventType_Name(e.type()).substr(sizeof("EVENT_TYPE_") - 1),
          " ", e.task().id(), " ", Short(e.task().status()));
      if (!e.task().video_url().empty()) absl::StrAppend(&line, " ", e.task().video_url());
      if (!e.task().error().empty()) absl::StrAppend(&line, " error: ", e.task().error());
      if (e.task().has_archive()) {
        absl::StrAppend(&line, " archived: ", e.task().archive().uri(), " (",
                        e.task().archive().size_bytes(), " bytes, sha256 ",
                        e.task().archive().sha256(), ")");
      }
      if (!e.task().archive_error().empty()) {
        absl::StrAppend(&line, " archive error: ", e.task().archive_error());
      }
      std::cerr << line << "\n";
    }
  };
  absl::StatusOr<VideoTask> task = client->Await(id, options);
  if (!task.ok()) return Fail(task.status(), quiet);
  return task->status() == videotask::v1::VIDEO_TASK_STATUS_COMPLETED ? kCompleted : kVideoFailed;
}
