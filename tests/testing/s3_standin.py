#!/usr/bin/python3
"""A stand-in for Amazon S3, STS and the EKS Pod Identity agent, for tests.

This is a STAND-IN, not S3: it serves one process's tests on loopback. What
makes it an oracle is that every S3 request's SigV4 signature is recomputed
with botocore (AWS's own implementation, Debian's python3-botocore), so a
client whose signer disagrees with AWS's gets 403 SignatureDoesNotMatch here
as it would from S3. Run it with Debian's /usr/bin/python3 (not a pyenv one).

Three HTTP listeners on 127.0.0.1, each on a port of its own (0: any free):

S3 (path-style, and virtual-hosted when the Host header is
BUCKET.<--virtual-host-suffix>). Operations, as S3's REST API defines them:
PutObject, HeadObject, GetObject, CreateMultipartUpload, UploadPart,
CompleteMultipartUpload, AbortMultipartUpload. Every request must carry an
`Authorization: AWS4-HMAC-SHA256 ...` header (no anonymous access), an
X-Amz-Date within 15 minutes of the stand-in's clock (RequestTimeTooSkewed),
signed `host`, `x-amz-date` and `x-amz-content-sha256` headers and every other
x-amz-* header signed (AccessDenied otherwise, as S3 does); the
x-amz-content-sha256 must be the body's SHA-256 (XAmzContentSHA256Mismatch;
UNSIGNED-PAYLOAD is refused here on purpose: the client under test must sign
its bodies); the access key must be known (InvalidAccessKeyId), a temporary
key must come with its X-Amz-Security-Token (InvalidToken) and not be past
its expiration (ExpiredToken); the signature is recomputed with
botocore.auth.S3SigV4Auth over the received method, raw path, raw query, the
signed headers' received values and the claimed payload hash
(SignatureDoesNotMatch). Errors are S3's XML error body.

STS: POST / Action=AssumeRoleWithWebIdentity (form-encoded, unsigned, as
botocore sends it) with the configured web identity token answers S3-usable
temporary credentials expiring after --sts-duration seconds of the stand-in's
clock (XML as in the STS API reference); a wrong token is 400
InvalidIdentityToken.

Pod Identity: GET any path with `Authorization: <the configured token>`
answers JSON {AccessKeyId, SecretAccessKey, Token, AccountId, Expiration}, as
the EKS Pod Identity agent does; another token is 401.

Control (on the S3 port, unsigned; bucket names cannot start with "_"):
  GET  /_standin/requests   every S3 request so far, as JSON
  GET  /_standin/state      objects and open multipart uploads, as JSON
  POST /_standin/faults     JSON list of faults appended to the script:
        {"op": "UploadPart" | "*", "part": N (optional), "times": N (-1:
         always), "status": 500, "code": "InternalError"}
  POST /_standin/clock      {"now": UNIX_SECONDS} fixes the clock there,
                            {"advance": SECONDS} moves it, {"now": null}
                            follows the real clock again
  POST /_standin/reset      forget requests and faults

When the three listen it prints one line to stdout:
  READY {"s3": PORT, "sts": PORT, "pod": PORT}
"""

import argparse
import base64
import datetime
import hashlib
import hmac
import json
import secrets
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

SIGV4_TIMESTAMP = "%Y%m%dT%H%M%SZ"


class State:
    def __init__(self, args):
        self.lock = threading.Lock()
        self.region = args.region
        self.buckets = set(args.bucket)
        self.vhost_suffix = args.virtual_host_suffix
        self.keys = {}  # access key id -> (secret, token or None, expiry or None)
        for spec in args.credentials:
            akid, secret = spec.split(":", 1)
            self.keys[akid] = (secret, None, None)
        self.web_identity_token = args.web_identity_token
        self.pod_token = args.pod_identity_token
        self.sts_duration = args.sts_duration
        self.fixed_now = None
        self.requests = []
        self.faults = []
        self.objects = {}  # (bucket, key) -> dict(body, content_type, meta)
        self.uploads = {}  # upload id -> dict(bucket, key, content_type, meta, parts)
        self.sts_calls = 0
        self.pod_calls = 0

    def now(self):
        with self.lock:
            return self.fixed_now if self.fixed_now is not None else time.time()

    def issue_temporary(self):
        akid = "ASIA" + secrets.token_hex(8).upper()
        secret = secrets.token_urlsafe(30)
        token = secrets.token_urlsafe(60)
        expiry = self.now() + self.sts_duration
        with self.lock:
            self.keys[akid] = (secret, token, expiry)
        return akid, secret, token, expiry


def iso8601(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def error_xml(code, message, extra=""):
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>{extra}"
        f"<RequestId>{secrets.token_hex(8)}</RequestId></Error>"
    ).encode()


class S3Error(Exception):
    def __init__(self, status, code, message, extra=""):
        super().__init__(code)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def parse_authorization(value):
    if not value or not value.startswith("AWS4-HMAC-SHA256 "):
        raise S3Error(403, "AccessDenied", "Anonymous access is not allowed here")
    fields = {}
    for part in value[len("AWS4-HMAC-SHA256 "):].split(","):
        k, _, v = part.strip().partition("=")
        fields[k] = v
    try:
        akid, date, region, service, term = fields["Credential"].split("/")
        signed = fields["SignedHeaders"].split(";")
        signature = fields["Signature"]
    except (KeyError, ValueError):
        raise S3Error(400, "AuthorizationHeaderMalformed", "The authorization header is malformed")
    if term != "aws4_request" or service != "s3":
        raise S3Error(400, "AuthorizationHeaderMalformed", "Bad credential scope")
    return akid, date, region, signed, signature


def make_s3_handler(state):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet: the record is /_standin/requests
            pass

        # --- plumbing -------------------------------------------------------
        def reply(self, status, body=b"", headers=None, head=False):
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if "Content-Length" not in (headers or {}):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body and not head:
                self.wfile.write(body)

        def read_body(self):
            n = int(self.headers.get("Content-Length") or 0)
            chunks, left = [], n
            while left > 0:
                c = self.rfile.read(min(left, 1 << 20))
                if not c:
                    break
                chunks.append(c)
                left -= len(c)
            return b"".join(chunks)

        def do_GET(self):
            self.dispatch("GET")

        def do_HEAD(self):
            self.dispatch("HEAD")

        def do_PUT(self):
            self.dispatch("PUT")

        def do_POST(self):
            self.dispatch("POST")

        def do_DELETE(self):
            self.dispatch("DELETE")

        # --- control ---------------------------------------------------------
        def control(self, method, path, body):
            if method == "GET" and path == "/_standin/requests":
                with state.lock:
                    out = json.dumps(state.requests)
            elif method == "GET" and path == "/_standin/state":
                with state.lock:
                    out = json.dumps({
                        "objects": [
                            {"bucket": b, "key": k, "size": len(o["body"]),
                             "sha256": hashlib.sha256(o["body"]).hexdigest(),
                             "content_type": o["content_type"], "meta": o["meta"]}
                            for (b, k), o in state.objects.items()],
                        "uploads": [
                            {"upload_id": u, "bucket": x["bucket"], "key": x["key"],
                             "parts": len(x["parts"])}
                            for u, x in state.uploads.items()],
                        "sts_calls": state.sts_calls,
                        "pod_calls": state.pod_calls,
                    })
            elif method == "POST" and path == "/_standin/faults":
                with state.lock:
                    state.faults.extend(json.loads(body or b"[]"))
                out = "{}"
            elif method == "POST" and path == "/_standin/clock":
                cmd = json.loads(body or b"{}")
                with state.lock:
                    if "advance" in cmd:
                        base = state.fixed_now if state.fixed_now is not None else time.time()
                        state.fixed_now = base + float(cmd["advance"])
                    elif "now" in cmd:
                        state.fixed_now = None if cmd["now"] is None else float(cmd["now"])
                out = "{}"
            elif method == "POST" and path == "/_standin/reset":
                with state.lock:
                    state.requests.clear()
                    state.faults.clear()
                out = "{}"
            else:
                self.reply(404, b"no such control")
                return
            self.reply(200, out.encode(), {"Content-Type": "application/json"})

        # --- S3 --------------------------------------------------------------
        def bucket_and_key(self, path):
            host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
            suffix = "." + state.vhost_suffix if state.vhost_suffix else None
            if suffix and host.endswith(suffix) and len(host) > len(suffix):
                bucket = host[: -len(suffix)]
                key = path[1:]
            else:
                bucket, _, key = path[1:].partition("/")
            return bucket, urllib.parse.unquote(key)

        def operation(self, method, query, key):
            if method == "PUT":
                return "UploadPart" if "partNumber" in query else "PutObject"
            if method == "POST":
                return "CreateMultipartUpload" if "uploads" in query else "CompleteMultipartUpload"
            if method == "DELETE":
                return "AbortMultipartUpload" if "uploadId" in query else "DeleteObject"
            if method == "HEAD":
                return "HeadObject"
            return "GetObject"

        def verify(self, method, raw_path, raw_query, body):
            akid, date, region, signed, signature = parse_authorization(
                self.headers.get("Authorization"))
            with state.lock:
                known = state.keys.get(akid)
            if known is None:
                raise S3Error(403, "InvalidAccessKeyId",
                              "The AWS Access Key Id you provided does not exist in our records.")
            secret, token, expiry = known
            if region != state.region:
                raise S3Error(400, "AuthorizationHeaderMalformed",
                              f"the region '{region}' is wrong; expecting '{state.region}'")
            lower = {h.lower() for h in self.headers.keys()}
            for required in ("host", "x-amz-date", "x-amz-content-sha256"):
                if required not in signed:
                    raise S3Error(403, "AccessDenied", f"{required} must be signed")
            for h in lower:
                if h.startswith("x-amz-") and h not in signed:
                    raise S3Error(403, "AccessDenied",
                                  "There were headers present in the request which were not signed")
            amz_date = self.headers.get("X-Amz-Date") or ""
            try:
                ts = datetime.datetime.strptime(amz_date, SIGV4_TIMESTAMP).replace(
                    tzinfo=datetime.timezone.utc).timestamp()
            except ValueError:
                raise S3Error(403, "AccessDenied", "X-Amz-Date is not a SigV4 timestamp")
            if amz_date[:8] != date:
                raise S3Error(403, "SignatureDoesNotMatch", "credential scope date differs")
            if abs(ts - state.now()) > 15 * 60:
                raise S3Error(403, "RequestTimeTooSkewed",
                              "The difference between the request time and the current time is too large.")
            claimed = self.headers.get("X-Amz-Content-SHA256") or ""
            if claimed != hashlib.sha256(body).hexdigest():
                raise S3Error(400, "XAmzContentSHA256Mismatch",
                              "The provided 'x-amz-content-sha256' header does not match what was computed.")
            given_token = self.headers.get("X-Amz-Security-Token")
            if token is not None:
                if given_token != token:
                    raise S3Error(403, "InvalidToken",
                                  "The provided token is malformed or otherwise invalid.")
                if state.now() >= expiry:
                    raise S3Error(400, "ExpiredToken", "The provided token has expired.")
            elif given_token is not None:
                raise S3Error(403, "InvalidToken", "A long-term key takes no security token.")
            # Recompute the signature with botocore over what was received.
            url = "http://" + self.headers.get("Host") + raw_path
            if raw_query:
                url += "?" + raw_query
            request = AWSRequest(method=method, url=url, data=body)
            for name in signed:
                values = self.headers.get_all(name) or []
                if not values:
                    raise S3Error(403, "SignatureDoesNotMatch", f"signed header {name} missing")
                for v in values:
                    request.headers[name] = v  # appends: a repeated header keeps every value
            request.context["timestamp"] = amz_date
            auth = S3SigV4Auth(Credentials(akid, secret, token), "s3", region)
            canonical = auth.canonical_request(request)
            string_to_sign = auth.string_to_sign(request, canonical)
            expected = auth.signature(string_to_sign, request)
            if not hmac.compare_digest(expected, signature):
                raise S3Error(
                    403, "SignatureDoesNotMatch",
                    "The request signature we calculated does not match the signature you "
                    "provided. Check your key and signing method.",
                    f"<AWSAccessKeyId>{akid}</AWSAccessKeyId>"
                    f"<StringToSign>{string_to_sign}</StringToSign>"
                    f"<CanonicalRequest>{canonical}</CanonicalRequest>")
            return akid, token is not None

        def fault_for(self, op, part):
            with state.lock:
                for f in state.faults:
                    if f.get("times", 1) == 0:
                        continue
                    if f.get("op", "*") not in ("*", op):
                        continue
                    if "part" in f and str(f["part"]) != str(part):
                        continue
                    if f.get("times", 1) > 0:
                        f["times"] = f.get("times", 1) - 1
                    return f
            return None

        def dispatch(self, method):
            parsed = urllib.parse.urlsplit(self.path)
            raw_path, raw_query = parsed.path, parsed.query
            body = self.read_body() if method in ("PUT", "POST") else b""
            if raw_path.startswith("/_standin/"):
                self.control(method, raw_path, body)
                return
            query = urllib.parse.parse_qs(raw_query, keep_blank_values=True)
            q = {k: v[0] for k, v in query.items()}
            bucket, key = self.bucket_and_key(raw_path)
            op = self.operation(method, q, key)
            record = {"op": op, "method": method, "path": raw_path, "query": raw_query,
                      "host": self.headers.get("Host"), "bucket": bucket, "key": key,
                      "part": q.get("partNumber"), "bytes": len(body),
                      "content_type": self.headers.get("Content-Type"),
                      "token": self.headers.get("X-Amz-Security-Token") is not None,
                      "status": 0, "code": None, "access_key": None}
            try:
                record["access_key"], _ = self.verify(method, raw_path, raw_query, body)
                fault = self.fault_for(op, q.get("partNumber"))
                if fault is not None:
                    raise S3Error(int(fault.get("status", 500)), fault.get("code", "InternalError"),
                                  "injected by the stand-in's fault script")
                if bucket not in state.buckets:
                    raise S3Error(404, "NoSuchBucket", "The specified bucket does not exist")
                status, out, headers = self.s3(method, op, bucket, key, q, body)
            except S3Error as e:
                status, out, headers = e.status, error_xml(e.code, e.message, e.extra), {
                    "Content-Type": "application/xml"}
                record["code"] = e.code
            record["status"] = status
            with state.lock:
                state.requests.append(record)
            self.reply(status, out, headers, head=(method == "HEAD"))

        def s3(self, method, op, bucket, key, q, body):
            meta = {h.lower()[len("x-amz-meta-"):]: v for h, v in self.headers.items()
                    if h.lower().startswith("x-amz-meta-")}
            ctype = self.headers.get("Content-Type") or "binary/octet-stream"
            if op == "PutObject":
                etag = '"%s"' % hashlib.md5(body).hexdigest()
                with state.lock:
                    state.objects[(bucket, key)] = {"body": body, "content_type": ctype,
                                                    "meta": meta, "etag": etag}
                return 200, b"", {"ETag": etag}
            if op in ("HeadObject", "GetObject"):
                with state.lock:
                    obj = state.objects.get((bucket, key))
                if obj is None:
                    raise S3Error(404, "NoSuchKey", "The specified key does not exist.")
                headers = {"Content-Type": obj["content_type"], "ETag": obj["etag"],
                           "Content-Length": str(len(obj["body"]))}
                for k, v in obj["meta"].items():
                    headers["x-amz-meta-" + k] = v
                return 200, obj["body"], headers
            if op == "CreateMultipartUpload":
                upload_id = secrets.token_urlsafe(24)
                with state.lock:
                    state.uploads[upload_id] = {"bucket": bucket, "key": key, "content_type": ctype,
                                                "meta": meta, "parts": {}}
                xml = ('<?xml version="1.0" encoding="UTF-8"?>\n<InitiateMultipartUploadResult>'
                       f"<Bucket>{bucket}</Bucket><Key>{key}</Key><UploadId>{upload_id}</UploadId>"
                       "</InitiateMultipartUploadResult>").encode()
                return 200, xml, {"Content-Type": "application/xml"}
            upload_id = q.get("uploadId")
            with state.lock:
                upload = state.uploads.get(upload_id)
            if upload is None or upload["bucket"] != bucket or upload["key"] != key:
                raise S3Error(404, "NoSuchUpload", "The specified upload does not exist.")
            if op == "UploadPart":
                n = int(q.get("partNumber", "0"))
                if not 1 <= n <= 10000:
                    raise S3Error(400, "InvalidArgument", "Part number must be 1..10000")
                etag = '"%s"' % hashlib.md5(body).hexdigest()
                with state.lock:
                    upload["parts"][n] = (etag, body)
                return 200, b"", {"ETag": etag}
            if op == "AbortMultipartUpload":
                with state.lock:
                    state.uploads.pop(upload_id, None)
                return 204, b"", {}
            if op == "CompleteMultipartUpload":
                text = body.decode()
                listed = []
                for chunk in text.split("<Part>")[1:]:
                    n = int(chunk.split("<PartNumber>")[1].split("</PartNumber>")[0])
                    etag = chunk.split("<ETag>")[1].split("</ETag>")[0].replace("&quot;", '"')
                    listed.append((n, etag))
                if not listed or [n for n, _ in listed] != sorted({n for n, _ in listed}):
                    raise S3Error(400, "InvalidPartOrder", "The list of parts was not in ascending order.")
                with state.lock:
                    parts = dict(upload["parts"])
                for i, (n, etag) in enumerate(listed):
                    if n not in parts or parts[n][0] != etag:
                        raise S3Error(400, "InvalidPart", "One or more of the specified parts could not be found.")
                    if i < len(listed) - 1 and len(parts[n][1]) < 5 * 1024 * 1024:
                        raise S3Error(400, "EntityTooSmall", "Your proposed upload is smaller than the minimum allowed object size.")
                data = b"".join(parts[n][1] for n, _ in listed)
                digest = hashlib.md5(b"".join(bytes.fromhex(parts[n][0].strip('"')) for n, _ in listed))
                etag = '"%s-%d"' % (digest.hexdigest(), len(listed))
                with state.lock:
                    state.objects[(bucket, key)] = {"body": data, "content_type": upload["content_type"],
                                                    "meta": upload["meta"], "etag": etag}
                    state.uploads.pop(upload_id, None)
                xml = ('<?xml version="1.0" encoding="UTF-8"?>\n<CompleteMultipartUploadResult>'
                       f"<Bucket>{bucket}</Bucket><Key>{key}</Key><ETag>{etag}</ETag>"
                       "</CompleteMultipartUploadResult>").encode()
                return 200, xml, {"Content-Type": "application/xml"}
            raise S3Error(405, "MethodNotAllowed", "not implemented by the stand-in")

    return Handler


def make_sts_handler(state):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            pass

        def answer(self, status, xml):
            body = xml.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            form = urllib.parse.parse_qs(self.rfile.read(n).decode(), keep_blank_values=True)
            f = {k: v[0] for k, v in form.items()}
            with state.lock:
                state.sts_calls += 1
            if f.get("Action") != "AssumeRoleWithWebIdentity" or f.get("Version") != "2011-06-15":
                self.answer(400, "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidAction</Code>"
                                 "<Message>Could not find operation</Message></Error></ErrorResponse>")
                return
            if not f.get("RoleArn") or not f.get("RoleSessionName"):
                self.answer(400, "<ErrorResponse><Error><Type>Sender</Type><Code>ValidationError</Code>"
                                 "<Message>RoleArn and RoleSessionName are required</Message></Error></ErrorResponse>")
                return
            if f.get("WebIdentityToken") != state.web_identity_token:
                self.answer(400, "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code>"
                                 "<Message>Couldn't verify the web identity token</Message></Error></ErrorResponse>")
                return
            akid, secret, token, expiry = state.issue_temporary()
            self.answer(200, f"""<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:videotask:sidecar</SubjectFromWebIdentityToken>
    <Audience>sts.amazonaws.com</Audience>
    <AssumedRoleUser>
      <Arn>{f['RoleArn']}/{f['RoleSessionName']}</Arn>
      <AssumedRoleId>AROA{secrets.token_hex(6).upper()}:{f['RoleSessionName']}</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <SessionToken>{token}</SessionToken>
      <SecretAccessKey>{secret}</SecretAccessKey>
      <Expiration>{iso8601(expiry)}</Expiration>
      <AccessKeyId>{akid}</AccessKeyId>
    </Credentials>
    <Provider>oidc.eks.us-east-1.amazonaws.com/id/STANDIN</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata>
    <RequestId>{secrets.token_hex(8)}</RequestId>
  </ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>""")

    return Handler


def make_pod_handler(state):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            pass

        def do_GET(self):
            with state.lock:
                state.pod_calls += 1
            if self.headers.get("Authorization") != state.pod_token:
                body = json.dumps({"code": "AccessDeniedException",
                                   "message": "invalid token"}).encode()
                status = 401
            else:
                akid, secret, token, expiry = state.issue_temporary()
                body = json.dumps({"AccessKeyId": akid, "SecretAccessKey": secret, "Token": token,
                                   "AccountId": "123456789012",
                                   "Expiration": iso8601(expiry)}).encode()
                status = 200
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--s3-port", type=int, default=0)
    p.add_argument("--sts-port", type=int, default=0)
    p.add_argument("--pod-port", type=int, default=0)
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--bucket", action="append", default=[])
    p.add_argument("--credentials", action="append", default=[], help="AKID:SECRET")
    p.add_argument("--virtual-host-suffix", default="localhost")
    p.add_argument("--web-identity-token", default="standin-web-identity-token")
    p.add_argument("--pod-identity-token", default="standin-pod-identity-token")
    p.add_argument("--sts-duration", type=float, default=3600)
    args = p.parse_args()
    state = State(args)
    servers = []
    for port, handler in ((args.s3_port, make_s3_handler(state)),
                          (args.sts_port, make_sts_handler(state)),
                          (args.pod_port, make_pod_handler(state))):
        server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    print("READY " + json.dumps({"s3": servers[0].server_address[1],
                                 "sts": servers[1].server_address[1],
                                 "pod": servers[2].server_address[1]}), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
