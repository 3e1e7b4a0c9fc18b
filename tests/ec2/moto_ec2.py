#!/usr/bin/env python3
"""The EC2 side of lb's high-availability tests, against moto's EC2 server.

    moto_ec2.py ENDPOINT setup ADDR1 ADDR2
        Creates a VPC, a subnet, one network interface per load balancer
        (primary addresses ADDR1 and ADDR2) and an Elastic IP; prints their
        ids as JSON.
    moto_ec2.py ENDPOINT where ALLOCATION_ID
        Prints, as JSON, the interface the Elastic IP is associated with and
        every interface's private addresses.
    moto_ec2.py ENDPOINT takeover ENI ALLOCATION_ID ADDRESS...
        What a keepalived notify_master script does on EC2: assigns the
        addresses to ENI (reassignment allowed) and associates the Elastic IP
        with it and the first address. The glue lb replaces, for the
        benchmark's comparison.
    moto_ec2.py ENDPOINT wait ALLOCATION_ID ENI
        Prints "ready", then polls every 10 ms until the Elastic IP is
        associated with ENI, and prints the milliseconds that took (at most
        60 s; exits 1 on timeout).
"""
import json
import sys
import time

import boto3


def client(endpoint):
    return boto3.client(
        "ec2",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def setup(ec2, a1, a2):
    net24 = a1.rsplit(".", 1)[0] + ".0/24"
    vpc = ec2.create_vpc(CidrBlock=net24)["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=net24)
    subnet = subnet["Subnet"]["SubnetId"]
    enis = [
        ec2.create_network_interface(SubnetId=subnet, PrivateIpAddress=a)[
            "NetworkInterface"
        ]["NetworkInterfaceId"]
        for a in (a1, a2)
    ]
    alloc = ec2.allocate_address(Domain="vpc")
    return {
        "enis": enis,
        "allocation_id": alloc["AllocationId"],
        "public_ip": alloc["PublicIp"],
    }


def where(ec2, allocation_id):
    address = ec2.describe_addresses(AllocationIds=[allocation_id])["Addresses"][0]
    interfaces = {
        n["NetworkInterfaceId"]: [p["PrivateIpAddress"] for p in n["PrivateIpAddresses"]]
        for n in ec2.describe_network_interfaces()["NetworkInterfaces"]
    }
    return {
        "eip_interface": address.get("NetworkInterfaceId"),
        "interfaces": interfaces,
    }


def takeover(ec2, eni, allocation_id, *addresses):
    ec2.assign_private_ip_addresses(
        NetworkInterfaceId=eni, PrivateIpAddresses=list(addresses), AllowReassignment=True
    )
    ec2.associate_address(
        AllocationId=allocation_id,
        NetworkInterfaceId=eni,
        PrivateIpAddress=addresses[0],
        AllowReassociation=True,
    )
    return {"ok": True}


def wait(ec2, allocation_id, eni):
    print("ready", flush=True)
    start = time.monotonic()
    while time.monotonic() - start < 60:
        address = ec2.describe_addresses(AllocationIds=[allocation_id])["Addresses"][0]
        if address.get("NetworkInterfaceId") == eni:
            return {"ms": (time.monotonic() - start) * 1000}
        time.sleep(0.01)
    raise SystemExit("timed out")


def main():
    endpoint, verb, *args = sys.argv[1:]
    ec2 = client(endpoint)
    if verb == "setup":
        out = setup(ec2, *args)
    elif verb == "where":
        out = where(ec2, *args)
    elif verb == "takeover":
        out = takeover(ec2, *args)
    elif verb == "wait":
        out = wait(ec2, *args)
    else:
        raise SystemExit(f"unknown verb {verb!r}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
