// Structured, one-line-per-event logging to stderr, as text or JSON.
//
//   LogEvent(LogLevel::kWarning, "upstream_error", {{"task", id}, {"class", c}});
// prints `2026-11-25T04:00:00Z WARN upstream_error task=abc class=transient`
// or `{"ts":"...","level":"WARN","event":"upstream_error","task":"abc",...}`.
// Values are escaped; lines never interleave. Callers never pass secrets.
#ifndef VIDEOTASK_SERVER_BASE_LOG_H_
#define VIDEOTASK_SERVER_BASE_LOG_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"

namespace videotask {

enum class LogLevel { kInfo, kWarning, kError };
enum class LogFormat { kText, kJson };

using LogFields = std::vector<std::pair<std::string, std::string>>;

// Process-wide; text by default.
void SetLogFormat(LogFormat format);
void LogEvent(LogLevel level, absl::string_view event, const LogFields& fields = {});

// Formats one line without writing it (for tests).
std::string FormatLogLine(LogFormat format, LogLevel level, absl::string_view event,
                          const LogFields& fields);

}  // namespace videotask

#endif  // VIDEOTASK_SERVER_BASE_LOG_H_
