// ParseRequest: the first step of both RPCs, which receive their request as
// the raw bytes gRPC read off the wire (grpc::ByteBuffer), so that a request
// that does not parse is INVALID_ARGUMENT rather than gRPC's UNIMPLEMENTED.
// A pure function of those bytes, kept apart so it can be fuzzed
// (//tests/fuzz:request_fuzzer).
#ifndef VIDEOTASK_SERVER_API_REQUEST_PARSE_H_
#define VIDEOTASK_SERVER_API_REQUEST_PARSE_H_

#include "google/protobuf/message_lite.h"
#include "grpcpp/support/byte_buffer.h"

namespace videotask {

// Parses `message` from the bytes in `buffer` (any number of slices). An
// empty buffer is a message with every field unset. False when the bytes
// are not a valid serialization of the message.
bool ParseRequest(const grpc::ByteBuffer& buffer, google::protobuf::MessageLite* message);

}  // namespace videotask

#endif  // VIDEOTASK_SERVER_API_REQUEST_PARSE_H_
