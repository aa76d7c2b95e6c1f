#include "server/fleet/redis_script.h"

#include <openssl/evp.h>

#include <memory>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace videotask::fleet {

RedisScript::RedisScript(std::string source) : source_(std::move(source)) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(source_.data(), source_.size(), md, &len, EVP_sha1(), nullptr);
  sha1_ = absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(md), len));
}

void RedisScript::Run(RedisClient& client, std::vector<std::string> keys,
                      std::vector<std::string> args, RedisClient::Done done) const {
  std::vector<std::string> argv = {"EVALSHA", sha1_, absl::StrCat(keys.size())};
  argv.insert(argv.end(), keys.begin(), keys.end());
  argv.insert(argv.end(), args.begin(), args.end());
  RedisClient* c = &client;
  std::string source = source_;
  client.Command(argv, [c, argv, source = std::move(source), done = std::move(done)](
                           absl::StatusOr<RedisReply> r) mutable {
    if (!r.ok() || !r->is_error() || !absl::StartsWith(r->str, "NOSCRIPT")) {
      done(std::move(r));
      return;
    }
    c->Command({"SCRIPT", "LOAD", std::move(source)}, [](absl::StatusOr<RedisReply>) {});
    c->Command(std::move(argv), std::move(done));
  });
}

}  // namespace videotask::fleet

namespace videotask::fleet {

absl::StatusOr<RedisReply> RedisScript::RunAndWait(RedisClient& client,
                                                   std::vector<std::string> keys,
                                                   std::vector<std::string> args) const {
  struct Call {
    absl::Mutex mu;
    bool done ABSL_GUARDED_BY(mu) = false;
    absl::StatusOr<RedisReply> reply ABSL_GUARDED_BY(mu);
  };
  // Shared: `done` may still be returning when the waiter has gone.
  auto call = std::make_shared<Call>();
  Run(client, std::move(keys), std::move(args), [call](absl::StatusOr<RedisReply> r) {
    absl::MutexLock lock(&call->mu);
    call->reply = std::move(r);
    call->done = true;
  });
  absl::MutexLock lock(&call->mu);
  call->mu.Await(absl::Condition(&call->done));
  return std::move(call->reply);
}

}  // namespace videotask::fleet
