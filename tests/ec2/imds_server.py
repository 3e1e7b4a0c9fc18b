#!/usr/bin/env python3
"""An IMDSv2 server for lb's EC2 tests: the instance metadata of one moto
instance, following moto's state.

    imds_server.py --listen 127.0.0.1:1338 --moto http://10.X.0.5:5000 --instance i-...

Speaks IMDSv2 only, as EC2 does with HttpTokens=required: `PUT
/latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` (1 to 21600)
returns a token; every GET must carry it in `X-aws-ec2-metadata-token`, or
gets 401. Serves instance-id, placement/{region,availability-zone}, and per
MAC (network/interfaces/macs/MAC/) interface-id, subnet-id, vpc-id,
subnet-ipv4-cidr-block, device-number and local-ipv4s, read from moto
(DescribeInstances, DescribeSubnets) at each request; when moto is out of
reach it serves what it read last, as EC2's metadata stays local to the
host. Prints "ready" once listening, then one line per request:
"METHOD PATH STATUS".
"""
import argparse
import http.server
import secrets
import sys
import threading
import time

import boto3

TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"


class State:
    def __init__(self, endpoint, instance_id):
        self.ec2 = boto3.client(
            "ec2",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        self.instance_id = instance_id
        self.tokens = {}
        self.lock = threading.Lock()
        self.last = None

    def read(self):
        """{'zone':..., 'nics': {mac: {...}}} from moto, or the last one read."""
        try:
            inst = self.ec2.describe_instances(InstanceIds=[self.instance_id])
            inst = inst["Reservations"][0]["Instances"][0]
            enis = self.ec2.describe_network_interfaces(
                Filters=[{"Name": "attachment.instance-id", "Values": [self.instance_id]}]
            )["NetworkInterfaces"]
            subnets = {
                s["SubnetId"]: s
                for s in self.ec2.describe_subnets(
                    SubnetIds=sorted({e["SubnetId"] for e in enis})
                )["Subnets"]
            }
            nics = {}
            for e in enis:
                nics[e["MacAddress"].lower()] = {
                    "interface-id": e["NetworkInterfaceId"],
                    "subnet-id": e["SubnetId"],
                    "vpc-id": e["VpcId"],
                    "subnet-ipv4-cidr-block": subnets[e["SubnetId"]]["CidrBlock"],
                    "device-number": str(e.get("Attachment", {}).get("DeviceIndex", 0)),
                    "local-ipv4s": "\n".join(
                        p["PrivateIpAddress"] for p in e["PrivateIpAddresses"]
                    ),
                }
            state = {"zone": inst["Placement"]["AvailabilityZone"], "nics": nics}
            with self.lock:
                self.last = state
            return state
        except Exception as e:  # moto out of reach: what was read last
            with self.lock:
                if self.last is None:
                    raise RuntimeError(f"moto unreachable and nothing read yet: {e}")
                return self.last

    def lookup(self, path):
        """The text at a meta-data path, or None (404)."""
        s = self.read()
        zone = s["zone"]
        simple = {
            "instance-id": self.instance_id,
            "placement/availability-zone": zone,
            "placement/region": zone[:-1],
            "network/interfaces/macs": "\n".join(m + "/" for m in sorted(s["nics"])),
        }
        p = path.strip("/")
        if p in simple:
            return simple[p]
        parts = p.split("/")
        if len(parts) == 5 and parts[:3] == ["network", "interfaces", "macs"]:
            nic = s["nics"].get(parts[3].lower())
            if nic is not None:
                return nic.get(parts[4])
        return None


def handler(state):
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            pass

        def reply(self, status, body=""):
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            print(f"{self.command} {self.path} {status}", flush=True)

        def do_PUT(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            if self.path != "/latest/api/token":
                return self.reply(404)
            ttl = self.headers.get(TTL_HEADER)
            if ttl is None or not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                return self.reply(400)
            token = secrets.token_urlsafe(32)
            with state.lock:
                state.tokens[token] = time.monotonic() + int(ttl)
            self.send_response(200)
            self.send_header(TTL_HEADER, ttl)
            self.send_header("Content-Length", str(len(token)))
            self.end_headers()
            self.wfile.write(token.encode())
            print(f"PUT {self.path} 200", flush=True)

        def do_GET(self):
            token = self.headers.get(TOKEN_HEADER)
            with state.lock:
                expiry = state.tokens.get(token)
            if expiry is None or expiry < time.monotonic():
                return self.reply(401)
            prefix = "/latest/meta-data/"
            if not self.path.startswith(prefix):
                return self.reply(404)
            try:
                text = state.lookup(self.path[len(prefix):])
            except RuntimeError:
                return self.reply(503)
            if text is None:
                return self.reply(404)
            self.reply(200, text)

    return H


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--moto", required=True)
    ap.add_argument("--instance", required=True)
    a = ap.parse_args()
    host, port = a.listen.rsplit(":", 1)
    state = State(a.moto, a.instance)
    state.read()
    server = http.server.ThreadingHTTPServer((host, int(port)), handler(state))
    print("ready", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
