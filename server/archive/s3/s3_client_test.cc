// S3Client against the stand-in S3 (tests/testing/s3_standin.py: every
// request's SigV4 signature and payload hash recomputed with botocore), with
// objects read back by Debian's AWS CLI, an independent client.
#include "server/archive/s3/s3_client.h"

#include <openssl/sha.h>

#include <cstdio>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "tests/testing/listeners.h"
#include "tests/testing/s3_standin.h"
#include "tests/testing/subprocess.h"

namespace videotask::s3 {
namespace {

using ::videotask::testing::S3Standin;

constexpr char kKeyId[] = "AKIASTANDIN";
constexpr char kSecret[] = "standin-secret-key";

// Deterministic bytes made on the fly: object `seed`, `size` bytes; never
// whole in memory. `on_offset` runs when a read starts at or past
// `at_offset` (once), to move time mid-upload.
class PatternSource : public ByteSource {
 public:
  PatternSource(int seed, int64_t size) : seed_(seed), size_(size) {}
  absl::StatusOr<size_t> Read(char* buf, size_t n) override {
    if (on_offset_ && offset_ >= at_offset_) {
      auto f = std::move(on_offset_);
      on_offset_ = nullptr;
      f();
    }
    const size_t k = static_cast<size_t>(std::min<int64_t>(n, size_ - offset_));
    for (size_t i = 0; i < k; ++i) buf[i] = Byte(offset_ + i);
    offset_ += k;
    max_read_ = std::max(max_read_, n);
    return k;
  }
  char Byte(int64_t i) const {
    return static_cast<char>((i * 2654435761u + seed_ * 97 + (i >> 13)) & 0xff);
  }
  std::string Sha256() const {
    SHA256_CTX ctx;
    SHA256_Init(&ctx);
    std::string chunk;
    for (int64_t off = 0; off < size_; off += 1 << 20) {
      chunk.resize(static_cast<size_t>(std::min<int64_t>(1 << 20, size_ - off)));
      for (size_t i = 0; i < chunk.size(); ++i) chunk[i] = Byte(off + i);
      SHA256_Update(&ctx, chunk.data(), chunk.size());
    }
    unsigned char d[SHA256_DIGEST_LENGTH];
    SHA256_Final(d, &ctx);
    return absl::BytesToHexString(absl::string_view(reinterpret_cast<char*>(d), sizeof(d)));
  }
  void At(int64_t offset, std::function<void()> f) {
    at_offset_ = offset;
    on_offset_ = std::move(f);
  }

 private:
  const int seed_;
  const int64_t size_;
  int64_t offset_ = 0;
  size_t max_read_ = 0;
  int64_t at_offset_ = 0;
  std::function<void()> on_offset_;
};

ObjectSpec SpecFor(const std::string& key, const PatternSource& src, int64_t size) {
  ObjectSpec spec;
  spec.key = key;
  spec.size = size;
  spec.sha256 = src.Sha256();
  spec.content_type = "video/mp4";
  return spec;
}

std::shared_ptr<CredentialsProvider> Keys(const std::string& secret = kSecret) {
  CredentialsOptions o;
  o.env = {{"AWS_ACCESS_KEY_ID", kKeyId}, {"AWS_SECRET_ACCESS_KEY", secret}};
  return std::shared_ptr<CredentialsProvider>(*CredentialsFromEnvironment(o));
}

int CountOps(const nlohmann::json& requests, const std::string& op,
             const std::string& part = "") {
  int n = 0;
  for (const auto& r : requests) {
    if (r["op"] == op && (part.empty() || (r["part"].is_string() && r["part"] == part))) ++n;
  }
  return n;
}

class S3ClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<S3Standin>> s = S3Standin::Start();
    ASSERT_TRUE(s.ok()) << s.status();
    standin_ = *std::move(s);
  }

  S3Client::Options Opts(bool path_style = true) {
    S3Client::Options o;
    o.bucket = "videos";
    o.endpoint = path_style ? standin_->S3Endpoint() : standin_->S3VirtualHostEndpoint();
    o.path_style = path_style;
    o.initial_backoff = absl::Seconds(1);
    o.sleep = [this](absl::Duration d) {
      absl::MutexLock lock(&mu_);
      sleeps_.push_back(d);
    };
    return o;
  }

  std::unique_ptr<S3Client> Client(S3Client::Options o,
                                   std::shared_ptr<CredentialsProvider> creds = Keys(),
                                   Clock* clock = nullptr) {
    auto c = S3Client::Create(std::move(o), std::move(creds), clock);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }

  std::unique_ptr<S3Standin> standin_;
  absl::Mutex mu_;
  std::vector<absl::Duration> sleeps_;
};

TEST_F(S3ClientTest, SmallObjectIsOnePutAndAwsCliReadsItBack) {
  for (bool path_style : {true, false}) {
    SCOPED_TRACE(path_style ? "path-style" : "virtual-hosted");
    ASSERT_TRUE(standin_->Reset().ok());
    auto client = Client(Opts(path_style));
    ASSERT_NE(client, nullptr);
    const int64_t size = 3 << 20;
    PatternSource src(1, size);
    const std::string key = path_style ? "archive/task-1.mp4" : "archive/task-1-vh.mp4";
    const ObjectSpec spec = SpecFor(key, src, size);
    absl::StatusOr<UploadResult> r = client->Upload(spec, src);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->uri, "s3://videos/" + key);
    EXPECT_FALSE(r->reused);
    EXPECT_EQ(r->parts, 0);
    EXPECT_LE(r->peak_buffer_bytes, kPartSize);
    const nlohmann::json requests = standin_->Requests();
    EXPECT_EQ(CountOps(requests, "PutObject"), 1);
    EXPECT_EQ(requests.back()["host"].get<std::string>().rfind("videos.localhost", 0) == 0,
              !path_style);
    const nlohmann::json objects = standin_->State()["objects"];
    ASSERT_EQ(objects.size(), path_style ? 1u : 2u);
    EXPECT_EQ(objects.back()["key"], key);
    EXPECT_EQ(objects.back()["sha256"], spec.sha256);
    EXPECT_EQ(objects.back()["meta"]["sha256"], spec.sha256);
    EXPECT_EQ(objects.back()["content_type"], "video/mp4");
  }

  const std::string aws = testing::DebianAwsCli();
  if (aws.empty()) GTEST_SKIP() << "Debian's awscli is not installed (./dev deps installs it)";
  const std::string tmp = std::getenv("TEST_TMPDIR");
  const std::string config = absl::StrCat(tmp, "/aws-config");
  std::ofstream(config) << "[default]\nregion = us-east-1\ns3 =\n  addressing_style = path\n";
  const std::string out = absl::StrCat(tmp, "/read-back.mp4");
  absl::StatusOr<testing::Subprocess> cli = testing::Subprocess::Start(
      {aws, "s3api", "get-object", "--endpoint-url", standin_->S3Endpoint(), "--bucket", "videos",
       "--key", "archive/task-1.mp4", out},
      {{"AWS_ACCESS_KEY_ID", kKeyId}, {"AWS_SECRET_ACCESS_KEY", kSecret},
       {"AWS_CONFIG_FILE", config}, {"AWS_SHARED_CREDENTIALS_FILE", config + ".none"},
       {"AWS_EC2_METADATA_DISABLED", "true"}, {"HOME", tmp}, {"PYTHONNOUSERSITE", "1"},
       {"PYTHONPATH", ""}, {"AWS_PAGER", ""}});
  ASSERT_TRUE(cli.ok()) << cli.status();
  ASSERT_EQ(cli->Wait(absl::Seconds(60)), 0) << cli->Stdout() << cli->Stderr();
  EXPECT_TRUE(absl::StrContains(cli->Stdout(), "\"ContentType\": \"video/mp4\"")) << cli->Stdout();
  std::ifstream in(out, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  PatternSource again(1, 3 << 20);
  unsigned char d[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), d);
  EXPECT_EQ(absl::BytesToHexString(absl::string_view(reinterpret_cast<char*>(d), sizeof(d))),
            again.Sha256());
}

TEST_F(S3ClientTest, NinetySixMiBGoThroughMultipartOnePartInMemory) {
  auto client = Client(Opts());
  ASSERT_NE(client, nullptr);
  const int64_t size = int64_t{96} << 20;
  PatternSource src(2, size);
  const ObjectSpec spec = SpecFor("archive/big.mp4", src, size);
  absl::StatusOr<UploadResult> r = client->Upload(spec, src);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->parts, 12);
  // The client's only buffer for the bytes is one part.
  EXPECT_LE(r->peak_buffer_bytes, kPartSize);
  EXPECT_GE(r->peak_buffer_bytes, kPartSize);
  const nlohmann::json requests = standin_->Requests();
  EXPECT_EQ(CountOps(requests, "CreateMultipartUpload"), 1);
  EXPECT_EQ(CountOps(requests, "UploadPart"), 12);
  EXPECT_EQ(CountOps(requests, "CompleteMultipartUpload"), 1);
  for (const auto& req : requests) {
    EXPECT_LE(req["bytes"].get<int64_t>(), static_cast<int64_t>(kPartSize));
  }
  const nlohmann::json state = standin_->State();
  ASSERT_EQ(state["objects"].size(), 1u);
  EXPECT_EQ(state["objects"][0]["size"], size);
  EXPECT_EQ(state["objects"][0]["sha256"], spec.sha256);
  EXPECT_EQ(state["objects"][0]["meta"]["sha256"], spec.sha256);
  EXPECT_EQ(state["objects"][0]["content_type"], "video/mp4");
  EXPECT_TRUE(state["uploads"].empty());
}

TEST_F(S3ClientTest, WrongSecretIsSignatureDoesNotMatchAtOnceWithoutTheSecret) {
  auto client = Client(Opts(), Keys("a-wrong-secret-value"));
  ASSERT_NE(client, nullptr);
  PatternSource src(3, 1000);
  absl::StatusOr<UploadResult> r = client->Upload(SpecFor("k.mp4", src, 1000), src);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied) << r.status();
  EXPECT_EQ(S3ErrorCode(r.status()), "SignatureDoesNotMatch");
  EXPECT_TRUE(absl::StrContains(r.status().message(), "SignatureDoesNotMatch")) << r.status();
  EXPECT_TRUE(absl::StrContains(r.status().message(), "s3://videos/k.mp4"));
  EXPECT_FALSE(absl::StrContains(r.status().ToString(), "a-wrong-secret-value"));
  EXPECT_EQ(CountOps(standin_->Requests(), "PutObject"), 1);  // not retried
  EXPECT_TRUE(sleeps_.empty());
}

TEST_F(S3ClientTest, NoSuchBucketAndAccessDeniedFailAtOnce) {
  S3Client::Options o = Opts();
  o.bucket = "missing-bucket";
  auto client = Client(std::move(o));
  ASSERT_NE(client, nullptr);
  PatternSource src(4, 1000);
  absl::StatusOr<UploadResult> r = client->Upload(SpecFor("k.mp4", src, 1000), src);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound) << r.status();
  EXPECT_EQ(S3ErrorCode(r.status()), "NoSuchBucket");

  ASSERT_TRUE(standin_->AddFault({{"op", "PutObject"}, {"times", -1}, {"status", 403},
                                  {"code", "AccessDenied"}}).ok());
  auto ok_bucket = Client(Opts());
  PatternSource src2(4, 1000);
  r = ok_bucket->Upload(SpecFor("k.mp4", src2, 1000), src2);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied) << r.status();
  EXPECT_EQ(S3ErrorCode(r.status()), "AccessDenied");
  EXPECT_TRUE(sleeps_.empty());
}

// The store's <Code> reaches errors, logs and metrics bounded, printable
// and without a secret of ours.
TEST_F(S3ClientTest, StoreErrorCodeIsBoundedAndRedacted) {
  ASSERT_TRUE(standin_->AddFault({{"op", "PutObject"}, {"times", -1}, {"status", 403},
                                  {"code", absl::StrCat("AccessDenied", kSecret,
                                                        std::string(5000, 'A'), "\r\nX-Evil: 1")}})
                  .ok());
  auto client = Client(Opts());
  ASSERT_NE(client, nullptr);
  PatternSource src(4, 1000);
  absl::StatusOr<UploadResult> r = client->Upload(SpecFor("k.mp4", src, 1000), src);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied) << r.status();
  const std::string code = S3ErrorCode(r.status());
  EXPECT_TRUE(absl::StartsWith(code, "AccessDenied")) << code;
  EXPECT_LE(code.size(), 64u) << code;
  const std::string m(r.status().message());
  for (const std::string& text : {code, m}) {
    EXPECT_FALSE(absl::StrContains(text, kSecret)) << text;
    EXPECT_FALSE(absl::StrContains(text, "standinsecretkey")) << text;
    EXPECT_FALSE(absl::StrContains(text, "X-Evil")) << text;
    EXPECT_FALSE(absl::StrContains(text, "\n")) << text;
  }
  EXPECT_LT(m.size(), 600u) << m;
}

TEST_F(S3ClientTest, UserinfoInTheEndpointIsRefusedUnshown) {
  S3Client::Options o = Opts();
  o.endpoint = "https://user:hunter2pw@s3.example.com";
  auto c = S3Client::Create(std::move(o), Keys());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(absl::StrContains(c.status().message(), "hunter2pw")) << c.status();
}

TEST_F(S3ClientTest, PartFailingTwiceIsRetriedAlone) {
  S3Client::Options o = Opts();
  o.part_size = 5 << 20;
  auto client = Client(std::move(o));
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(standin_->AddFault({{"op", "UploadPart"}, {"part", 2}, {"times", 2},
                                  {"status", 500}, {"code", "InternalError"}}).ok());
  const int64_t size = (11 << 20) + 7;
  PatternSource src(5, size);
  const ObjectSpec spec = SpecFor("retry.mp4", src, size);
  absl::StatusOr<UploadResult> r = client->Upload(spec, src);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->parts, 3);
  const nlohmann::json requests = standin_->Requests();
  EXPECT_EQ(CountOps(requests, "UploadPart", "1"), 1);
  EXPECT_EQ(CountOps(requests, "UploadPart", "2"), 3);
  EXPECT_EQ(CountOps(requests, "UploadPart", "3"), 1);
  EXPECT_EQ(sleeps_, (std::vector<absl::Duration>{absl::Seconds(1), absl::Seconds(2)}));
  const nlohmann::json state = standin_->State();
  ASSERT_EQ(state["objects"].size(), 1u);
  EXPECT_EQ(state["objects"][0]["sha256"], spec.sha256);
}

TEST_F(S3ClientTest, PermanentPartFailureAbortsTheUpload) {
  S3Client::Options o = Opts();
  o.part_size = 5 << 20;
  o.max_attempts = 3;
  auto client = Client(std::move(o));
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(standin_->AddFault({{"op", "UploadPart"}, {"part", 2}, {"times", -1},
                                  {"status", 503}, {"code", "SlowDown"}}).ok());
  const int64_t size = 12 << 20;
  PatternSource src(6, size);
  absl::StatusOr<UploadResult> r = client->Upload(SpecFor("abort.mp4", src, size), src);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_EQ(S3ErrorCode(r.status()), "SlowDown");
  EXPECT_TRUE(absl::StrContains(r.status().message(), "after 3 attempts")) << r.status();
  EXPECT_TRUE(absl::StrContains(r.status().message(), "the upload was aborted")) << r.status();
  const nlohmann::json requests = standin_->Requests();
  EXPECT_EQ(CountOps(requests, "UploadPart", "2"), 3);
  EXPECT_EQ(CountOps(requests, "UploadPart", "3"), 0);
  EXPECT_EQ(CountOps(requests, "AbortMultipartUpload"), 1);
  const nlohmann::json state = standin_->State();
  EXPECT_TRUE(state["uploads"].empty()) << state.dump();  // no parts left billed
  EXPECT_TRUE(state["objects"].empty());
}

TEST_F(S3ClientTest, SourceThatDisagreesWithTheSpecStoresNothing) {
  S3Client::Options o = Opts();
  o.part_size = 5 << 20;
  auto client = Client(std::move(o));
  ASSERT_NE(client, nullptr);
  PatternSource other(7, 11 << 20);
  ObjectSpec spec = SpecFor("lie.mp4", other, 11 << 20);
  PatternSource src(8, 11 << 20);  // same size, other bytes
  absl::StatusOr<UploadResult> r = client->Upload(spec, src);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
  EXPECT_TRUE(absl::StrContains(r.status().message(), "aborted")) << r.status();
  PatternSource short_src(7, 1000);
  r = client->Upload(SpecFor("short.mp4", short_src, 2000), short_src);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
  const nlohmann::json state = standin_->State();
  EXPECT_TRUE(state["uploads"].empty());
  EXPECT_TRUE(state["objects"].empty());
}

TEST_F(S3ClientTest, ObjectAlreadyThereWithTheSameBytesIsReused) {
  auto client = Client(Opts());
  ASSERT_NE(client, nullptr);
  PatternSource src(9, 4096);
  const ObjectSpec spec = SpecFor("again.mp4", src, 4096);
  ASSERT_TRUE(client->Upload(spec, src).ok());
  ASSERT_TRUE(standin_->Reset().ok());
  // A restart, or another pod: a new client, a fresh source.
  auto other = Client(Opts());
  PatternSource src2(9, 4096);
  absl::StatusOr<UploadResult> r = other->Upload(spec, src2);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->reused);
  nlohmann::json requests = standin_->Requests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0]["op"], "HeadObject");
  absl::StatusOr<std::optional<ObjectInfo>> info = other->Head("again.mp4");
  ASSERT_TRUE(info.ok() && info->has_value());
  EXPECT_EQ((*info)->size, 4096);
  EXPECT_EQ((*info)->sha256, spec.sha256);
  info = other->Head("nothing-here.mp4");
  ASSERT_TRUE(info.ok());
  EXPECT_FALSE(info->has_value());

  // Other bytes under the key: uploaded again.
  ASSERT_TRUE(standin_->Reset().ok());
  PatternSource changed(10, 4096);
  ObjectSpec spec2 = SpecFor("again.mp4", changed, 4096);
  r = other->Upload(spec2, changed);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->reused);
  EXPECT_EQ(CountOps(standin_->Requests(), "PutObject"), 1);
}

TEST_F(S3ClientTest, IrsaCredentialsExpireAndAreRefreshedMidUpload) {
  // 15-minute credentials (STS's shortest), on a simulated clock that the
  // stand-in follows.
  standin_.reset();
  S3Standin::Options so;
  so.sts_duration = absl::Minutes(15);
  absl::StatusOr<std::unique_ptr<S3Standin>> s = S3Standin::Start(so);
  ASSERT_TRUE(s.ok()) << s.status();
  standin_ = *std::move(s);
  SimulatedClock clock(absl::Now());
  ASSERT_TRUE(standin_->SetClock(clock.Now()).ok());
  const std::string token_file = absl::StrCat(std::getenv("TEST_TMPDIR"), "/irsa-token");
  std::ofstream(token_file) << "standin-web-identity-token";
  CredentialsOptions co;
  co.clock = &clock;
  co.refresh_before = absl::Seconds(1);  // so that the ExpiredToken case below can happen
  co.env = {{"AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/videotask"},
            {"AWS_WEB_IDENTITY_TOKEN_FILE", token_file},
            {"AWS_ENDPOINT_URL_STS", standin_->StsEndpoint()}};
  std::shared_ptr<CredentialsProvider> creds(*CredentialsFromEnvironment(co));
  S3Client::Options o = Opts();
  o.part_size = 5 << 20;
  auto client = Client(std::move(o), creds, &clock);
  ASSERT_NE(client, nullptr);

  // 16 minutes pass while part 3 is read: the first credentials have
  // expired by the time it is signed.
  const int64_t size = 15 << 20;
  PatternSource src(11, size);
  src.At(10 << 20, [&] {
    clock.Advance(absl::Minutes(16));
    ASSERT_TRUE(standin_->SetClock(clock.Now()).ok());
  });
  const ObjectSpec spec = SpecFor("irsa.mp4", src, size);
  absl::StatusOr<UploadResult> r = client->Upload(spec, src);
  ASSERT_TRUE(r.ok()) << r.status();
  nlohmann::json state = standin_->State();
  EXPECT_EQ(state["sts_calls"], 2);
  ASSERT_EQ(state["objects"].size(), 1u);
  EXPECT_EQ(state["objects"][0]["sha256"], spec.sha256);
  std::string first_key, last_key;
  for (const auto& req : standin_->Requests()) {
    EXPECT_TRUE(req["token"].get<bool>());  // X-Amz-Security-Token on every request
    EXPECT_EQ(req["status"], req["op"] == "HeadObject" ? 404 : 200) << req.dump();
    if (first_key.empty()) first_key = req["access_key"];
    last_key = req["access_key"];
  }
  EXPECT_NE(first_key, last_key);

  // Our clock is 6 minutes behind the store's (within S3's 15-minute skew):
  // we think the credentials good for 5 more minutes, S3 answers
  // ExpiredToken; the provider fetches anew at once and the request succeeds.
  ASSERT_TRUE(standin_->Reset().ok());
  clock.Advance(absl::Minutes(10));
  ASSERT_TRUE(standin_->SetClock(clock.Now() + absl::Minutes(6)).ok());
  PatternSource small(12, 100);
  r = client->Upload(SpecFor("irsa-2.mp4", small, 100), small);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(standin_->State()["sts_calls"], 3);
  bool saw_expired = false;
  for (const auto& req : standin_->Requests()) saw_expired |= req["code"] == "ExpiredToken";
  EXPECT_TRUE(saw_expired);
  EXPECT_TRUE(sleeps_.empty());
}

TEST_F(S3ClientTest, PodIdentityCredentialsSignUploads) {
  const std::string token_file = absl::StrCat(std::getenv("TEST_TMPDIR"), "/pod-token");
  std::ofstream(token_file) << "standin-pod-identity-token";
  CredentialsOptions co;
  co.env = {{"AWS_CONTAINER_CREDENTIALS_FULL_URI", standin_->PodIdentityUri()},
            {"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", token_file}};
  std::shared_ptr<CredentialsProvider> creds(*CredentialsFromEnvironment(co));
  auto client = Client(Opts(), creds);
  ASSERT_NE(client, nullptr);
  PatternSource src(13, 2048);
  absl::StatusOr<UploadResult> r = client->Upload(SpecFor("pod.mp4", src, 2048), src);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(standin_->State()["pod_calls"], 1);
  for (const auto& req : standin_->Requests()) EXPECT_TRUE(req["token"].get<bool>());
}

TEST_F(S3ClientTest, CancelledUploadIsAbortedAndStoresNothing) {
  S3Client::Options o = Opts();
  o.part_size = 5 << 20;
  auto client = Client(std::move(o));
  ASSERT_NE(client, nullptr);
  const int64_t size = 15 << 20;
  PatternSource src(14, size);
  ObjectSpec spec = SpecFor("cancel.mp4", src, size);
  bool stop = false;
  spec.cancelled = [&stop] { return stop; };
  src.At(5 << 20, [&stop] { stop = true; });  // while part 2 is read
  absl::StatusOr<UploadResult> r = client->Upload(spec, src);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled) << r.status();
  EXPECT_TRUE(absl::StrContains(r.status().message(), "the upload was aborted")) << r.status();
  const nlohmann::json requests = standin_->Requests();
  EXPECT_EQ(CountOps(requests, "UploadPart"), 1);
  EXPECT_EQ(CountOps(requests, "AbortMultipartUpload"), 1);
  const nlohmann::json state = standin_->State();
  EXPECT_TRUE(state["uploads"].empty());
  EXPECT_TRUE(state["objects"].empty());
}

TEST_F(S3ClientTest, EndpointThatNeverAnswersIsRetriedThenUnavailable) {
  testing::SilentListener silent;
  S3Client::Options o = Opts();
  o.endpoint = absl::StrCat("http://", silent.target());
  o.request_timeout = absl::Milliseconds(300);
  o.max_attempts = 2;
  auto client = Client(std::move(o));
  ASSERT_NE(client, nullptr);
  PatternSource src(15, 10);
  absl::StatusOr<UploadResult> r = client->Upload(SpecFor("silent.mp4", src, 10), src);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_TRUE(absl::StrContains(r.status().message(), "S3 HeadObject")) << r.status();
  EXPECT_TRUE(absl::StrContains(r.status().message(), "after 2 attempts")) << r.status();
  EXPECT_EQ(sleeps_.size(), 1u);
}

TEST_F(S3ClientTest, EmptyObjectAndConcurrentUploads) {
  auto client = Client(Opts());
  ASSERT_NE(client, nullptr);
  PatternSource empty(16, 0);
  absl::StatusOr<UploadResult> r = client->Upload(SpecFor("empty.mp4", empty, 0), empty);
  ASSERT_TRUE(r.ok()) << r.status();
  // One client, several uploads at once (the archiver's concurrent tasks).
  std::vector<std::thread> threads;
  std::vector<absl::Status> results(4);
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      PatternSource src(20 + i, 100000);
      results[i] = client->Upload(SpecFor(absl::StrCat("concurrent-", i, ".mp4"), src, 100000),
                                  src).status();
    });
  }
  for (std::thread& t : threads) t.join();
  for (const absl::Status& s : results) EXPECT_TRUE(s.ok()) << s;
  const nlohmann::json objects = standin_->State()["objects"];
  EXPECT_EQ(objects.size(), 5u);
  for (const auto& obj : objects) {
    if (obj["key"] == "empty.mp4") EXPECT_EQ(obj["size"], 0);
  }
}

// An AWS bucket with dots does not match *.s3.REGION.amazonaws.com's
// certificate as a virtual host, and a GCS bucket with '_' is no DNS name:
// both go path-style even when virtual-hosted addressing is configured.
TEST_F(S3ClientTest, BucketsWithDotsOrUnderscoresGoPathStyle) {
  S3Standin::Options so;
  so.buckets = {"media.example.com", "gcs_style_videos"};
  absl::StatusOr<std::unique_ptr<S3Standin>> standin = S3Standin::Start(so);
  ASSERT_TRUE(standin.ok()) << standin.status();
  for (const std::string bucket : {"media.example.com", "gcs_style_videos"}) {
    SCOPED_TRACE(bucket);
    S3Client::Options o = Opts(/*path_style=*/false);
    o.endpoint = (*standin)->S3VirtualHostEndpoint();
    o.bucket = bucket;
    auto client = Client(std::move(o));
    ASSERT_NE(client, nullptr);
    PatternSource src(2, 1000);
    const ObjectSpec spec = SpecFor("archive/t.mp4", src, 1000);
    absl::StatusOr<UploadResult> r = client->Upload(spec, src);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->uri, "s3://" + bucket + "/archive/t.mp4");
    const nlohmann::json last = (*standin)->Requests().back();
    EXPECT_EQ(last["host"].get<std::string>().find(bucket), std::string::npos) << last;
    EXPECT_EQ(last["bucket"], bucket);
  }
  EXPECT_EQ((*standin)->State()["objects"].size(), 2u);
}

TEST_F(S3ClientTest, ConfigurationRules) {
  S3Client::Options o = Opts();
  o.endpoint = "http://s3.example.com";
  EXPECT_EQ(S3Client::Create(std::move(o), Keys()).status().code(),
            absl::StatusCode::kInvalidArgument);
  o = Opts(/*path_style=*/false);
  o.endpoint = standin_->S3Endpoint();  // an IP address: no virtual host
  EXPECT_EQ(S3Client::Create(std::move(o), Keys()).status().code(),
            absl::StatusCode::kInvalidArgument);
  for (const std::string& bad :
       std::vector<std::string>{"Bad_Bucket", "ab", std::string(223, 'b'), "a/b", "a b"}) {
    o = Opts();
    o.bucket = bad;
    EXPECT_EQ(S3Client::Create(std::move(o), Keys()).status().code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
  o = Opts();
  o.part_size = 1 << 20;
  EXPECT_EQ(S3Client::Create(std::move(o), Keys()).status().code(),
            absl::StatusCode::kInvalidArgument);
  o = Opts();
  o.endpoint.clear();
  o.region = "eu-central-1";
  EXPECT_TRUE(S3Client::Create(std::move(o), Keys()).ok());  // https://s3.eu-central-1.amazonaws.com
}

}  // namespace
}  // namespace videotask::s3
