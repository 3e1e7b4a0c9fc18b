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
    moto_ec2.py ENDPOINT instances ADDR1 ADDR2 [ROUTE_DEST...]
        What the EC2 tests run against: a VPC, a subnet, two instances with
        primary addresses ADDR1 and ADDR2 (their first ENIs), a second ENI
        for each in a second subnet (device 1), an Elastic IP, and a route
        table with a /32 route to each ROUTE_DEST pointing at the first
        instance. Starts moto's request recorder. Prints the ids and MACs.
    moto_ec2.py ENDPOINT assign ENI ADDRESS
    moto_ec2.py ENDPOINT unassign ENI ADDRESS
    moto_ec2.py ENDPOINT associate ALLOCATION_ID ENI
    moto_ec2.py ENDPOINT replace-route ROUTE_TABLE DEST ENI
    moto_ec2.py ENDPOINT source-dest-check ENI on|off
        Drift made by hand, and the settings the modes need.
    moto_ec2.py ENDPOINT routes ROUTE_TABLE
        The /32 routes of the table and their ENIs.
    moto_ec2.py ENDPOINT requests
        The EC2 requests moto recorded (action and parameters), in order.
"""
import base64
import json
import sys
import time
import urllib.parse
import urllib.request

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


def instances(ec2, endpoint, a1, a2, *route_dests):
    net = a1.rsplit(".", 2)[0]
    vpc = ec2.create_vpc(CidrBlock=f"{net}.0.0/16")["Vpc"]["VpcId"]
    front = ec2.create_subnet(
        VpcId=vpc, CidrBlock=f"{net}.0.0/24", AvailabilityZone="us-east-1a"
    )["Subnet"]["SubnetId"]
    back = ec2.create_subnet(
        VpcId=vpc, CidrBlock=f"{net}.1.0/24", AvailabilityZone="us-east-1a"
    )["Subnet"]["SubnetId"]
    image = ec2.describe_images()["Images"][0]["ImageId"]
    out = {"instances": [], "enis": [], "macs": [], "enis1": [], "macs1": []}
    for i, a in enumerate((a1, a2)):
        inst = ec2.run_instances(
            ImageId=image, MinCount=1, MaxCount=1, SubnetId=front, PrivateIpAddress=a
        )["Instances"][0]
        nic = inst["NetworkInterfaces"][0]
        second = ec2.create_network_interface(
            SubnetId=back, PrivateIpAddress=f"{net}.1.{21 + i}"
        )["NetworkInterface"]
        ec2.attach_network_interface(
            NetworkInterfaceId=second["NetworkInterfaceId"],
            InstanceId=inst["InstanceId"],
            DeviceIndex=1,
        )
        out["instances"].append(inst["InstanceId"])
        out["enis"].append(nic["NetworkInterfaceId"])
        out["macs"].append(nic["MacAddress"])
        out["enis1"].append(second["NetworkInterfaceId"])
        out["macs1"].append(second["MacAddress"])
    alloc = ec2.allocate_address(Domain="vpc")
    out["allocation_id"] = alloc["AllocationId"]
    out["public_ip"] = alloc["PublicIp"]
    table = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
    for d in route_dests:
        ec2.create_route(
            RouteTableId=table,
            DestinationCidrBlock=f"{d}/32",
            NetworkInterfaceId=out["enis"][0],
        )
    out["route_table"] = table
    urllib.request.urlopen(
        urllib.request.Request(
            endpoint + "/moto-api/recorder/start-recording", method="POST"
        )
    ).read()
    return out


def requests(endpoint):
    text = urllib.request.urlopen(
        endpoint + "/moto-api/recorder/download-recording"
    ).read().decode()
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        body = r.get("body") or ""
        if r.get("body_encoded"):
            body = base64.b64decode(body).decode(errors="replace")
        params = dict(urllib.parse.parse_qsl(body))
        if "Action" in params:
            params.pop("Version", None)
            out.append(params)
    return out


def routes(ec2, table):
    t = ec2.describe_route_tables(RouteTableIds=[table])["RouteTables"][0]
    return {
        r["DestinationCidrBlock"]: r.get("NetworkInterfaceId")
        for r in t["Routes"]
        if r.get("DestinationCidrBlock", "").endswith("/32")
    }


def main():
    endpoint, verb, *args = sys.argv[1:]
    ec2 = client(endpoint)
    if verb == "instances":
        print(json.dumps(instances(ec2, endpoint, *args)))
        return
    if verb == "requests":
        print(json.dumps(requests(endpoint)))
        return
    if verb == "assign":
        eni, address = args
        ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=[address])
        print(json.dumps({"ok": True}))
        return
    if verb == "unassign":
        eni, address = args
        ec2.unassign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=[address])
        print(json.dumps({"ok": True}))
        return
    if verb == "associate":
        allocation, eni = args
        ec2.associate_address(AllocationId=allocation, NetworkInterfaceId=eni, AllowReassociation=True)
        print(json.dumps({"ok": True}))
        return
    if verb == "replace-route":
        table, dest, eni = args
        ec2.replace_route(RouteTableId=table, DestinationCidrBlock=f"{dest}/32", NetworkInterfaceId=eni)
        print(json.dumps({"ok": True}))
        return
    if verb == "source-dest-check":
        eni, on = args
        ec2.modify_network_interface_attribute(
            NetworkInterfaceId=eni, SourceDestCheck={"Value": on == "on"}
        )
        print(json.dumps({"ok": True}))
        return
    if verb == "routes":
        print(json.dumps(routes(ec2, *args)))
        return
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
