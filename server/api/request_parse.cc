#include "server/api/request_parse.h"

#include <climits>

#include "grpcpp/support/slice.h"

namespace videotask {

bool ParseRequest(const grpc::ByteBuffer& buffer, google::protobuf::MessageLite* message) {
  if (buffer.Length() == 0) return message->ParseFromArray(nullptr, 0);
  grpc::Slice bytes;
  return buffer.DumpToSingleSlice(&bytes).ok() && bytes.size() <= INT_MAX &&
         message->ParseFromArray(bytes.begin(), static_cast<int>(bytes.size()));
}

}  // namespace videotask
