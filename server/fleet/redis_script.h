// RedisScript: a Lua script run with EVALSHA, loaded on demand.
//
// The SHA1 is computed locally; Run() sends EVALSHA and, when Redis answers
// NOSCRIPT (first use, or after a Redis restart or SCRIPT FLUSH), sends
// SCRIPT LOAD and EVALSHA again back to back (pipelined, so one more round
// trip) and answers with that second reply.
// Error contract: as RedisClient::Command (transport errors as status, Redis
// error replies other than NOSCRIPT as an OK reply of type kError). The
// script is immutable; thread-safe.
#ifndef VIDEOTASK_SERVER_FLEET_REDIS_SCRIPT_H_
#define VIDEOTASK_SERVER_FLEET_REDIS_SCRIPT_H_

#include <string>
#include <vector>

#include "server/fleet/redis_client.h"

namespace videotask::fleet {

class RedisScript {
 public:
  explicit RedisScript(std::string source);

  const std::string& sha1() const { return sha1_; }
  void Run(RedisClient& client, std::vector<std::string> keys, std::vector<std::string> args,
           RedisClient::Done done) const;
  // Run, waiting for the reply (bounded: the client's command timeout per
  // round trip). For callers that block anyway (creates); never call it on
  // the client's thread.
  absl::StatusOr<RedisReply> RunAndWait(RedisClient& client, std::vector<std::string> keys,
                                        std::vector<std::string> args) const;

 private:
  std::string source_;
  std::string sha1_;  // lowercase hex
};

}  // namespace videotask::fleet

#endif  // VIDEOTASK_SERVER_FLEET_REDIS_SCRIPT_H_
