#!/usr/bin/env python3
"""moto_state.py ENDPOINT [REGION...]

Prints what moto holds that a build may leave behind, one "kind count" pair per line and
a total: live instances, key pairs, security groups other than `default`, this account's
AMIs and snapshots (but those of moto's default AMIs), and volumes that are not deleted. moto checks no signatures here; a
request needs only an Authorization header whose credential scope names the region.
"""
import re
import sys
import urllib.request


def call(endpoint, region, query):
    auth = (f"AWS4-HMAC-SHA256 Credential=x/20240101/{region}/ec2/aws4_request, "
            "SignedHeaders=host, Signature=00")
    req = urllib.request.Request(endpoint.rstrip("/") + "/", data=(query + "&Version=2016-11-15").encode(),
                                 headers={"Authorization": auth,
                                          "Content-Type": "application/x-www-form-urlencoded"})
    return urllib.request.urlopen(req, timeout=60).read().decode()


def counts(endpoint, region):
    out = {}
    body = call(endpoint, region, "Action=DescribeInstances")
    states = re.findall(r"<instanceState>\s*<code>\d+</code>\s*<name>([a-z-]+)</name>", body)
    out["instances"] = sum(1 for s in states if s != "terminated")
    out["key_pairs"] = len(re.findall(r"<keyName>", call(endpoint, region, "Action=DescribeKeyPairs")))
    groups = re.findall(r"<groupName>([^<]*)</groupName>", call(endpoint, region, "Action=DescribeSecurityGroups"))
    out["security_groups"] = sum(1 for g in groups if g != "default")
    out["amis"] = len(re.findall(r"<imageId>", call(endpoint, region, "Action=DescribeImages&Owner.1=self")))
    # moto's default AMIs (not this account's) are backed by snapshots it lists as "self":
    # those are not a build's.
    public = set(re.findall(r"<snapshotId>([^<]+)</snapshotId>", call(endpoint, region, "Action=DescribeImages")))
    public -= set(re.findall(r"<snapshotId>([^<]+)</snapshotId>",
                             call(endpoint, region, "Action=DescribeImages&Owner.1=self")))
    snaps = re.findall(r"<snapshotId>([^<]+)</snapshotId>", call(endpoint, region, "Action=DescribeSnapshots&Owner.1=self"))
    out["snapshots"] = sum(1 for x in set(snaps) if x not in public)
    vols = re.findall(r"<status>([a-z-]+)</status>", call(endpoint, region, "Action=DescribeVolumes"))
    out["volumes"] = sum(1 for v in vols if v not in ("deleted", "deleting"))
    return out


def main():
    endpoint = sys.argv[1]
    regions = sys.argv[2:] or ["us-east-1"]
    total = {}
    for r in regions:
        for k, v in counts(endpoint, r).items():
            total[k] = total.get(k, 0) + v
    for k, v in total.items():
        print(k, v)
    print("total", sum(total.values()))


if __name__ == "__main__":
    main()
