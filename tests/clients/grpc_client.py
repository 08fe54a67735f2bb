#!/usr/bin/env python3
"""Exercise the garage-ipfs gRPC Blockstore service with a stock Python
grpcio client, stubs generated at run time from the repository's .proto.

    python grpc_client.py <host:port> [--token TOKEN] [--namespace NS]

Run it with the interpreter of the clients venv (it needs grpcio and
grpcio-tools; see setup.sh). The stubs are generated from
../../proto/garage_ipfs/v1/blockstore.proto (relative to this file) into a
temporary directory that is removed afterwards.

--token TOKEN   sent as "authorization: Bearer TOKEN" metadata on every call
                (writes need it when the server has a token configured);
                also checks that a Put without it gives UNAUTHENTICATED
--namespace NS  namespace to use; default: a fresh unique one per run

Checks: Put of a few random raw blocks (CIDv1 raw sha2-256 computed here)
returns the same CID and the size; Get returns the bytes; Has is true, and
false for an absent CID; GetSize; List of the namespace contains every put
(and each entry's multihash matches its CID); Delete reports deleted = true,
then Has is false and Get is NOT_FOUND; a malformed CID ("not-a-cid") gives
INVALID_ARGUMENT; Get and GetSize of an absent block give NOT_FOUND; Put of
data that does not match its CID gives INVALID_ARGUMENT.

Prints one JSON line {"ok": bool, ..., "failures": [...]} to stdout; exit 0
if every check passed, 1 otherwise, 2 on usage errors.
"""
import argparse
import base64
import hashlib
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
PROTO_FILE = os.path.join("garage_ipfs", "v1", "blockstore.proto")
CALL_TIMEOUT_S = 30


def generate_stubs(out_dir):
    """Runs protoc (from grpcio-tools) on the service's .proto; returns the
    imported (pb2, pb2_grpc) modules."""
    from grpc_tools import protoc  # pylint: disable=import-outside-toplevel

    # grpc_tools ships the well-known types (google/protobuf/*.proto)
    wkt = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main([
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{wkt}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        os.path.join(PROTO_ROOT, PROTO_FILE),
    ])
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit code {rc} on {PROTO_FILE}")
    sys.path.insert(0, out_dir)
    pb2 = importlib.import_module("garage_ipfs.v1.blockstore_pb2")
    pb2_grpc = importlib.import_module("garage_ipfs.v1.blockstore_pb2_grpc")
    return pb2, pb2_grpc


def raw_cid(data):
    """CIDv1, raw codec (0x55), sha2-256 multihash, base32 lower, no padding."""
    multihash = b"\x12\x20" + hashlib.sha256(data).digest()
    return "b" + base64.b32encode(b"\x01\x55" + multihash).decode().lower().rstrip("="), multihash


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("target", help="host:port of the gRPC server")
    ap.add_argument("--token", default=None)
    ap.add_argument("--namespace", default=None)
    args = ap.parse_args()

    import grpc  # pylint: disable=import-outside-toplevel

    namespace = args.namespace or f"it-{uuid.uuid4().hex[:16]}"
    summary = {"ok": False, "target": args.target, "namespace": namespace,
               "put": 0, "get": 0, "has": 0, "getSize": 0, "listed": 0,
               "deleted": 0, "errorCodes": {}, "failures": []}
    failures = summary["failures"]

    def fail(msg):
        failures.append(msg)
        sys.stderr.write(f"grpc_client: FAIL {msg}\n")

    metadata = [("authorization", f"Bearer {args.token}")] if args.token else None

    def expect_code(name, code, fn):
        try:
            fn()
        except grpc.RpcError as e:
            summary["errorCodes"][name] = e.code().name
            if e.code() != code:
                fail(f"{name}: expected {code.name}, got {e.code().name} ({e.details()})")
            return
        summary["errorCodes"][name] = "OK"
        fail(f"{name}: expected {code.name}, the call succeeded")

    tmp = tempfile.mkdtemp(prefix="garage-ipfs-grpc-stubs-")
    started = time.monotonic()
    try:
        pb2, pb2_grpc = generate_stubs(tmp)
        channel = grpc.insecure_channel(args.target)
        try:
            grpc.channel_ready_future(channel).result(timeout=CALL_TIMEOUT_S)
        except grpc.FutureTimeoutError:
            fail(f"could not connect to {args.target} within {CALL_TIMEOUT_S} s")
            raise SystemExit(1) from None
        stub = pb2_grpc.BlockstoreStub(channel)
        kw = {"timeout": CALL_TIMEOUT_S, "metadata": metadata}

        blocks = []
        for size in (1, 1000, 64 * 1024, 1024 * 1024):
            data = os.urandom(size)
            cid, mh = raw_cid(data)
            blocks.append((cid, mh, data))

        # Put
        for cid, _mh, data in blocks:
            try:
                r = stub.Put(pb2.PutRequest(namespace=namespace, cid=cid, data=data), **kw)
                if r.cid != cid:
                    fail(f"Put {cid}: response cid {r.cid!r}")
                elif r.size != len(data):
                    fail(f"Put {cid}: response size {r.size}, expected {len(data)}")
                else:
                    summary["put"] += 1
            except grpc.RpcError as e:
                fail(f"Put {cid}: {e.code().name} {e.details()}")

        # Get / Has / GetSize
        for cid, _mh, data in blocks:
            try:
                r = stub.Get(pb2.GetRequest(namespace=namespace, cid=cid), **kw)
                if not r.found:
                    fail(f"Get {cid}: found = false")
                elif r.data != data:
                    fail(f"Get {cid}: {len(r.data)} bytes differ from the {len(data)} put")
                else:
                    summary["get"] += 1
            except grpc.RpcError as e:
                fail(f"Get {cid}: {e.code().name} {e.details()}")
            try:
                if stub.Has(pb2.HasRequest(namespace=namespace, cid=cid), **kw).has:
                    summary["has"] += 1
                else:
                    fail(f"Has {cid}: false after Put")
            except grpc.RpcError as e:
                fail(f"Has {cid}: {e.code().name} {e.details()}")
            try:
                size = stub.GetSize(pb2.GetSizeRequest(namespace=namespace, cid=cid), **kw).size
                if size != len(data):
                    fail(f"GetSize {cid}: {size}, expected {len(data)}")
                else:
                    summary["getSize"] += 1
            except grpc.RpcError as e:
                fail(f"GetSize {cid}: {e.code().name} {e.details()}")

        absent_cid, _ = raw_cid(b"garage-ipfs absent block " + uuid.uuid4().bytes)
        try:
            if stub.Has(pb2.HasRequest(namespace=namespace, cid=absent_cid), **kw).has:
                fail(f"Has of absent {absent_cid}: true")
        except grpc.RpcError as e:
            fail(f"Has of absent {absent_cid}: {e.code().name} {e.details()}")

        # List
        try:
            listed = {}
            for r in stub.List(pb2.ListRequest(namespace=namespace), **kw):
                listed[r.cid] = r.multihash
            for cid, mh, _data in blocks:
                if cid not in listed:
                    fail(f"List: {cid} missing ({len(listed)} listed)")
                elif listed[cid] != mh:
                    fail(f"List: multihash of {cid} is {listed[cid].hex()}, expected {mh.hex()}")
                else:
                    summary["listed"] += 1
        except grpc.RpcError as e:
            fail(f"List: {e.code().name} {e.details()}")

        # Error codes
        expect_code("Get(not-a-cid)", grpc.StatusCode.INVALID_ARGUMENT,
                    lambda: stub.Get(pb2.GetRequest(namespace=namespace, cid="not-a-cid"), **kw))
        expect_code("Put(not-a-cid)", grpc.StatusCode.INVALID_ARGUMENT,
                    lambda: stub.Put(pb2.PutRequest(namespace=namespace, cid="not-a-cid", data=b"x"), **kw))
        expect_code("Has(not-a-cid)", grpc.StatusCode.INVALID_ARGUMENT,
                    lambda: stub.Has(pb2.HasRequest(namespace=namespace, cid="not-a-cid"), **kw))
        expect_code("Get(absent)", grpc.StatusCode.NOT_FOUND,
                    lambda: stub.Get(pb2.GetRequest(namespace=namespace, cid=absent_cid), **kw))
        expect_code("GetSize(absent)", grpc.StatusCode.NOT_FOUND,
                    lambda: stub.GetSize(pb2.GetSizeRequest(namespace=namespace, cid=absent_cid), **kw))
        expect_code("Put(data not matching cid)", grpc.StatusCode.INVALID_ARGUMENT,
                    lambda: stub.Put(pb2.PutRequest(namespace=namespace, cid=blocks[0][0],
                                                    data=b"not the data of that cid"), **kw))

        # With a token: a write without it must be refused
        if args.token:
            data = os.urandom(100)
            cid, _ = raw_cid(data)
            expect_code("Put(without token)", grpc.StatusCode.UNAUTHENTICATED,
                        lambda: stub.Put(pb2.PutRequest(namespace=namespace, cid=cid, data=data),
                                         timeout=CALL_TIMEOUT_S))

        # Delete
        for cid, _mh, _data in blocks:
            try:
                if not stub.Delete(pb2.DeleteRequest(namespace=namespace, cid=cid), **kw).deleted:
                    fail(f"Delete {cid}: deleted = false")
                    continue
                if stub.Has(pb2.HasRequest(namespace=namespace, cid=cid), **kw).has:
                    fail(f"Has {cid} after Delete: true")
                    continue
                summary["deleted"] += 1
            except grpc.RpcError as e:
                fail(f"Delete {cid}: {e.code().name} {e.details()}")
        expect_code("Get(deleted)", grpc.StatusCode.NOT_FOUND,
                    lambda: stub.Get(pb2.GetRequest(namespace=namespace, cid=blocks[0][0]), **kw))
        try:
            again = stub.Delete(pb2.DeleteRequest(namespace=namespace, cid=blocks[0][0]), **kw)
            if again.deleted:
                fail("Delete of an already deleted block: deleted = true")
        except grpc.RpcError as e:
            fail(f"second Delete: {e.code().name} {e.details()}")
        channel.close()
    except SystemExit:
        pass
    except Exception as e:  # noqa: BLE001 - report anything as a failure
        fail(f"unexpected error: {type(e).__name__}: {e}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    summary["ms"] = int((time.monotonic() - started) * 1000)
    summary["ok"] = not failures
    print(json.dumps(summary), flush=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
