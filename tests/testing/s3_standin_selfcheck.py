#!/usr/bin/python3
"""Checks the stand-in S3/STS/Pod Identity agent (s3_standin.py) with botocore's
own clients: what AWS's SDK sends is accepted (path-style and virtual-hosted,
PutObject, HEAD, GET, multipart), a wrong secret is refused with
SignatureDoesNotMatch, and botocore's parsers read the stand-in STS's and Pod
Identity agent's answers. The stand-in is only a fair oracle for our client if
AWS's client passes it."""

import json
import os
import socket
import subprocess
import sys
import unittest

import botocore.session
from botocore import UNSIGNED
from botocore.config import Config
from botocore.credentials import ContainerProvider
from botocore.exceptions import ClientError

HERE = os.path.dirname(os.path.abspath(__file__))

# BUCKET.localhost is loopback (RFC 6761; libcurl resolves it so itself), but
# glibc without systemd-resolved does not: resolve it here as libcurl does.
_getaddrinfo = socket.getaddrinfo


def _loopback_localhost(host, *args, **kwargs):
    if isinstance(host, str) and host.endswith(".localhost"):
        host = "127.0.0.1"
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _loopback_localhost


class StandinSelfCheck(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "s3_standin.py"), "--bucket", "videos",
             "--credentials", "AKIASTANDIN:standin-secret-key"],
            stdout=subprocess.PIPE)
        line = cls.proc.stdout.readline().decode()
        assert line.startswith("READY "), line
        cls.ports = json.loads(line.split(" ", 1)[1])

    @classmethod
    def tearDownClass(cls):
        cls.proc.kill()
        cls.proc.wait()
        cls.proc.stdout.close()

    def client(self, style, secret="standin-secret-key"):
        return botocore.session.get_session().create_client(
            "s3", region_name="us-east-1",
            endpoint_url=f"http://localhost:{self.ports['s3']}",
            aws_access_key_id="AKIASTANDIN", aws_secret_access_key=secret,
            config=Config(s3={"addressing_style": style}))

    def test_botocore_s3_client_is_accepted(self):
        for style in ("path", "virtual"):
            c = self.client(style)
            key = f"{style}/a b+c.mp4"
            c.put_object(Bucket="videos", Key=key, Body=b"hello", ContentType="video/mp4",
                         Metadata={"sha256": "abc"})
            got = c.get_object(Bucket="videos", Key=key)
            self.assertEqual(got["Body"].read(), b"hello")
            self.assertEqual(got["ContentType"], "video/mp4")
            self.assertEqual(got["Metadata"], {"sha256": "abc"})
            self.assertEqual(c.head_object(Bucket="videos", Key=key)["ContentLength"], 5)
            up = c.create_multipart_upload(Bucket="videos", Key=key + ".big")
            e1 = c.upload_part(Bucket="videos", Key=key + ".big", UploadId=up["UploadId"],
                               PartNumber=1, Body=b"x" * (5 << 20))["ETag"]
            e2 = c.upload_part(Bucket="videos", Key=key + ".big", UploadId=up["UploadId"],
                               PartNumber=2, Body=b"y")["ETag"]
            c.complete_multipart_upload(
                Bucket="videos", Key=key + ".big", UploadId=up["UploadId"],
                MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1},
                                           {"PartNumber": 2, "ETag": e2}]})
            self.assertEqual(c.head_object(Bucket="videos", Key=key + ".big")["ContentLength"],
                             (5 << 20) + 1)
            up = c.create_multipart_upload(Bucket="videos", Key="aborted")
            c.abort_multipart_upload(Bucket="videos", Key="aborted", UploadId=up["UploadId"])

    def test_wrong_secret_and_missing_bucket_are_refused(self):
        with self.assertRaises(ClientError) as e:
            self.client("path", secret="wrong").put_object(Bucket="videos", Key="k", Body=b"x")
        self.assertEqual(e.exception.response["Error"]["Code"], "SignatureDoesNotMatch")
        with self.assertRaises(ClientError) as e:
            self.client("path").put_object(Bucket="nobucket", Key="k", Body=b"x")
        self.assertEqual(e.exception.response["Error"]["Code"], "NoSuchBucket")

    def test_sts_answer_parses_with_botocore_and_signs_s3(self):
        sts = botocore.session.get_session().create_client(
            "sts", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{self.ports['sts']}",
            config=Config(signature_version=UNSIGNED))
        creds = sts.assume_role_with_web_identity(
            RoleArn="arn:aws:iam::123456789012:role/videotask", RoleSessionName="check",
            WebIdentityToken="standin-web-identity-token")["Credentials"]
        self.assertTrue(creds["AccessKeyId"].startswith("ASIA"))
        s3 = botocore.session.get_session().create_client(
            "s3", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{self.ports['s3']}",
            aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"], config=Config(s3={"addressing_style": "path"}))
        s3.put_object(Bucket="videos", Key="sts", Body=b"x")
        with self.assertRaises(ClientError) as e:
            sts.assume_role_with_web_identity(RoleArn="arn:aws:iam::1:role/r", RoleSessionName="session",
                                              WebIdentityToken="wrong")
        self.assertEqual(e.exception.response["Error"]["Code"], "InvalidIdentityToken")

    def test_pod_identity_answer_loads_with_botocore(self):
        # Debian's botocore (1.29) predates AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE;
        # the token itself in the environment is read the same way.
        provider = ContainerProvider(environ={
            "AWS_CONTAINER_CREDENTIALS_FULL_URI":
                f"http://127.0.0.1:{self.ports['pod']}/v1/credentials",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN": "standin-pod-identity-token"})
        creds = provider.load().get_frozen_credentials()
        self.assertTrue(creds.access_key.startswith("ASIA"))
        self.assertTrue(creds.token)


if __name__ == "__main__":
    unittest.main()
