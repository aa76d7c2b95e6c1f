#include "tests/testing/test_pki.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "tests/testing/subprocess.h"

namespace videotask::testing {
namespace {

std::string FindOpenssl() {
  std::vector<std::string> dirs;
  if (const char* path = std::getenv("PATH"); path != nullptr) {
    dirs = absl::StrSplit(path, ':', absl::SkipEmpty());
  }
  dirs.push_back("/usr/bin");
  for (const std::string& d : dirs) {
    const std::string p = absl::StrCat(d, "/openssl");
    if (access(p.c_str(), X_OK) == 0) return p;
  }
  return "";
}

absl::Status Run(const std::string& openssl, std::vector<std::string> args) {
  args.insert(args.begin(), openssl);
  absl::StatusOr<Subprocess> p = Subprocess::Start(args);
  if (!p.ok()) return p.status();
  const std::optional<int> rc = p->Wait(absl::Seconds(30));
  if (rc != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("openssl ", args[1], " failed: ", p->Stderr()));
  }
  return absl::OkStatus();
}

absl::Status Write(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::trunc);
  f << text;
  f.close();
  return f ? absl::OkStatus() : absl::InternalError(absl::StrCat("cannot write ", path));
}

}  // namespace

absl::StatusOr<TestPki> TestPki::Create(const std::string& dir) {
  const std::string openssl = FindOpenssl();
  if (openssl.empty()) return absl::FailedPreconditionError("openssl not found");
  TestPki k;
  k.dir = dir;
  auto f = [&](const std::string& name) { return absl::StrCat(dir, "/", name); };
  k.ca_pem = f("ca.pem");
  k.ca_key = f("ca.key");
  k.other_ca_pem = f("other-ca.pem");
  k.server_pem = f("server.pem");
  k.server_key = f("server.key");
  k.expired_server_pem = f("expired-server.pem");
  k.client_pem = f("client.pem");
  k.client_key = f("client.key");
  k.other_client_pem = f("other-client.pem");
  k.other_client_key = f("other-client.key");
  const std::vector<std::string> ec = {"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                                       "-nodes"};
  auto self_signed = [&](const std::string& key, const std::string& pem, const std::string& cn) {
    std::vector<std::string> a = {"req", "-x509"};
    a.insert(a.end(), ec.begin(), ec.end());
    a.insert(a.end(), {"-keyout", key, "-out", pem, "-days", "3650", "-subj", "/CN=" + cn});
    return Run(openssl, a);
  };
  auto csr = [&](const std::string& key, const std::string& out, const std::string& cn) {
    std::vector<std::string> a = {"req"};
    a.insert(a.end(), ec.begin(), ec.end());
    a.insert(a.end(), {"-keyout", key, "-out", out, "-subj", "/CN=" + cn});
    return Run(openssl, a);
  };
  auto sign = [&](const std::string& csr_path, const std::string& ca, const std::string& ca_key,
                  const std::string& ext, const std::string& out) {
    return Run(openssl, {"x509", "-req", "-in", csr_path, "-CA", ca, "-CAkey", ca_key,
                         "-CAcreateserial", "-out", out, "-days", "365", "-extfile", ext});
  };
  absl::Status s;
  if (!(s = self_signed(k.ca_key, k.ca_pem, "videotask test CA")).ok()) return s;
  if (!(s = self_signed(f("other-ca.key"), k.other_ca_pem, "unrelated test CA")).ok()) return s;
  if (!(s = Write(f("server.ext"),
                  "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"))
           .ok()) {
    return s;
  }
  if (!(s = Write(f("client.ext"), "extendedKeyUsage=clientAuth\n")).ok()) return s;
  if (!(s = csr(k.server_key, f("server.csr"), "localhost")).ok()) return s;
  if (!(s = sign(f("server.csr"), k.ca_pem, k.ca_key, f("server.ext"), k.server_pem)).ok()) return s;
  if (!(s = csr(k.client_key, f("client.csr"), "videotask-client")).ok()) return s;
  if (!(s = sign(f("client.csr"), k.ca_pem, k.ca_key, f("client.ext"), k.client_pem)).ok()) return s;
  if (!(s = csr(k.other_client_key, f("other-client.csr"), "intruder")).ok()) return s;
  if (!(s = sign(f("other-client.csr"), k.other_ca_pem, f("other-ca.key"), f("client.ext"),
                 k.other_client_pem))
           .ok()) {
    return s;
  }
  // An expired server certificate needs explicit dates: `openssl ca`.
  const std::string ca_dir = f("ca-db");
  mkdir(ca_dir.c_str(), 0700);
  if (!(s = Write(ca_dir + "/index.txt", "")).ok()) return s;
  if (!(s = Write(ca_dir + "/serial", "1000\n")).ok()) return s;
  if (!(s = Write(f("ca.cnf"), absl::StrCat("[ca]\ndefault_ca = test\n[test]\ndatabase = ", ca_dir,
                                            "/index.txt\nserial = ", ca_dir,
                                            "/serial\nnew_certs_dir = ", ca_dir,
                                            "\ndefault_md = sha256\npolicy = any\n"
                                            "unique_subject = no\n[any]\ncommonName = supplied\n")))
           .ok()) {
    return s;
  }
  if (!(s = Run(openssl, {"ca", "-batch", "-config", f("ca.cnf"), "-cert", k.ca_pem, "-keyfile",
                          k.ca_key, "-in", f("server.csr"), "-out", k.expired_server_pem,
                          "-startdate", "20200101000000Z", "-enddate", "20200102000000Z",
                          "-extfile", f("server.ext"), "-notext"}))
           .ok()) {
    return s;
  }
  return k;
}

}  // namespace videotask::testing
