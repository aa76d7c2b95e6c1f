#include "server/base/command_line.h"

#include <string>

#include "absl/container/flat_hash_set.h"
#include "absl/flags/commandlineflag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"

namespace videotask {

absl::Status CheckCommandLineFlags(int argc, char** argv) {
  static const auto* const kAbslOwn = new absl::flat_hash_set<absl::string_view>{
      "help",    "helpfull",        "helpshort", "helppackage", "helpon",    "helpmatch",
      "version", "only_check_args", "flagfile",  "fromenv",     "tryfromenv", "undefok"};
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "--") break;
    if (!absl::ConsumePrefix(&arg, "--") && !absl::ConsumePrefix(&arg, "-")) continue;
    if (arg.empty()) continue;  // a lone "-": an argument, not a flag
    const size_t eq = arg.find('=');
    const absl::string_view name = arg.substr(0, eq);
    if (kAbslOwn->contains(name)) continue;
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr) {
      // --noNAME turns a boolean flag off and takes no value.
      absl::string_view positive = name;
      absl::CommandLineFlag* negated = absl::ConsumePrefix(&positive, "no")
                                           ? absl::FindCommandLineFlag(positive)
                                           : nullptr;
      if (negated != nullptr && negated->IsOfType<bool>() && eq == absl::string_view::npos) {
        continue;
      }
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    }
    std::string value;
    if (eq != absl::string_view::npos) {
      value = std::string(arg.substr(eq + 1));
    } else if (flag->IsOfType<bool>()) {
      continue;
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("flag --", name, " is missing its value"));
    }
    // ParseFrom is the only public way to check a value; put the old one back.
    const std::string before = flag->CurrentValue();
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad value for --", name, ": ", error));
    }
    flag->ParseFrom(before, &error);
  }
  return absl::OkStatus();
}

}  // namespace videotask
