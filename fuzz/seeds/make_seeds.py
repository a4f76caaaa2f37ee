#!/usr/bin/env python3
"""Writes small hand-made seed inputs for every fuzz target into fuzz/corpus/<target>/ (from
the repository's fixtures where they exist). Run once before fuzzing a new target; the
minimized corpora are committed, so this is only needed to start again from scratch."""

import base64
import gzip
import hashlib
import json
import pathlib
import re
import tomllib

FUZZ = pathlib.Path(__file__).resolve().parent.parent
ROOT = FUZZ.parent
FIXTURES = ROOT / "tests" / "fixtures"


def write(target, data):
    if isinstance(data, str):
        data = data.encode()
    out = FUZZ / "corpus" / target
    out.mkdir(parents=True, exist_ok=True)
    (out / ("seed-" + hashlib.sha1(data).hexdigest()[:16])).write_bytes(data)


def b64url(data):
    return base64.urlsafe_b64encode(data if isinstance(data, bytes) else data.encode()).rstrip(b"=").decode()


# HTTP heads and bodies.
for head in [
    "POST /session/v1/login-request?request_id=1&warehouse=W HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n",
    "POST /queries/v1/query-request HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\nAuthorization: Snowflake Token=\"sg1.x\"\r\n\r\n",
    "GET /queries/01b2c3d4-0000-1111-0000-000000000001/result HTTP/1.1\r\nHost: gw\r\nAccept: application/json\r\n\r\n",
    "POST /api/v2/statements HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer eyJ.a.b\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    "GET / HTTP/1.0\r\nX: a\r\n b\r\n\r\n",
]:
    write("http_request_head", head)
for head in [
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n\r\n",
    "HTTP/1.1 204 No Content\r\n\r\n",
    "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
    "HTTP/1.0 200 OK\r\nConnection: close\r\n\r\n",
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
]:
    write("http_response_head", head)
for split, body in [
    (3, "5\r\nhello\r\n0\r\n\r\n"),
    (9, "4;ext=1\r\nabcd\r\n3;a=\"q\\\"s\"\r\nxyz\r\n0\r\nTrailer: x\r\n\r\n"),
    (0, "A\r\n0123456789\r\n0\r\n\r\n"),
]:
    write("chunked_body", bytes([split]) + body.encode())
for text in [b"", b"[\"a\",\"b\"]\n", json.dumps({"data": {"rowset": [["1", "x"]]}}).encode() * 20]:
    write("gunzip_capped", gzip.compress(text, mtime=0))
    write("gunzip_capped", text)

# Login, session and query JSON.
login = {"data": {"CLIENT_APP_ID": "PythonConnector", "CLIENT_APP_VERSION": "3.12.0", "ACCOUNT_NAME": "acct",
                  "LOGIN_NAME": "agent", "AUTHENTICATOR": "OAUTH", "TOKEN": "eyJhbGciOiJSUzI1NiJ9.e30.sig-value",
                  "CLIENT_ENVIRONMENT": {"APPLICATION": "agent", "OS": "Linux"},
                  "SESSION_PARAMETERS": {"QUERY_TAG": "t", "CLIENT_SESSION_KEEP_ALIVE": True}}}
write("login_rewrite", json.dumps(login))
write("login_rewrite", json.dumps({"data": {"AUTHENTICATOR": "oauth", "TOKEN": "t0k3n-value", "PASSWORD": "p", "PASSCODE": "1"}}))
query = {"sqlText": "select ? as x", "asyncExec": False, "sequenceId": 2, "describeOnly": False,
         "parameters": {"QUERY_TAG": "trace-1"}, "bindings": {"1": {"type": "FIXED", "value": "10"}}}
write("session_json", b"\x00" + json.dumps(query).encode())
write("session_json", b"\x00" + b'{"sqlText":"select 1","bindings":null}')
write("session_json", b"\x01" + b'{"success":true,"code":null,"data":{"queryId":"01b2-0000","total":12}}')
write("session_json", b"\x01" + b'{"success":false,"code":390303,"message":"x","data":null}')
login_answer = {"success": True, "data": {"token": "upstream-session", "masterToken": "upstream-master",
                "validityInSeconds": 3600, "masterValidityInSeconds": 14400, "sessionId": 123,
                "idToken": "id", "mfaToken": "mfa", "sessionInfo": {"roleName": "R"}}}
write("session_json", b"\x02" + json.dumps(login_answer).encode())
write("session_json", b"\x02" + b'{"success":false,"code":"390100","data":{"token":"x","idToken":"y"}}')
write("session_json", b"\x03" + b'{"oldSessionToken":"SEALED","requestType":"RENEW"}')
write("session_json", b"\x03" + b'{"oldSessionToken":"sg1.AAAA","requestType":"RENEW"}')
write("sealed_token", b"\x00sg1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
write("sealed_token", b"\x01\x05\x00\x20upstream-session-token")
write("sealed_token", b"\x03\x40\x00\x01m")

# JWTs: raw tokens, then headers over good claims, then claims under a good header.
good_header = '{"alg":"ES256","kid":"key-ec","typ":"JWT"}'
good_claims = '{"iss":"https://idp.test/","aud":"snowgate","sub":"agent-1","exp":4102444800,"groups":["analysts"]}'
none_header = '{"alg":"none"}'
for token in [f"{b64url(good_header)}.{b64url(good_claims)}.c2ln", f"{b64url(none_header)}.{b64url(good_claims)}.",
              "a.b.c.d.e", "", "eyJ"]:
    write("jwt_header", b"\x00" + token.encode())
for header in [good_header, '{"alg":"ES256"}', '{"alg":"RS256","kid":"key-a"}', '{"alg":"nOnE"}',
               '{"alg":"ES256","kid":"key-ec","crit":["exp"]}', '{"alg":"ES256","kid":"key-ec","jku":"https://evil/"}',
               '{"alg":"ES256","alg":"ES256"}', '{"alg":"HS256","kid":"key-ec"}']:
    write("jwt_header", b"\x01" + header.encode())
for claims in [good_claims, good_claims.replace('"snowgate"', '["other","snowgate"]'),
               good_claims.replace("4102444800", '"4102444800"'), good_claims.replace('"exp":4102444800', '"exp":4102444800,"nbf":1'),
               good_claims.replace('"agent-1"', '""'), good_claims.replace('["analysts"]', '"solo"'),
               good_claims.replace("https://idp.test/", "https://idp.test")]:
    write("jwt_header", b"\x02" + claims.encode())

# SQL: the benign corpus's queries and the bypass corpus's statements.
benign = (FIXTURES / "policy" / "benign.sql").read_text()
for i, query in enumerate(q for q in re.split(r"^-- @@.*$", benign, flags=re.M) if q.strip()):
    if i % 4 == 0:
        write("classify", query.strip())
bypass = tomllib.loads((FIXTURES / "policy" / "bypass.toml").read_text())
for case in bypass["case"]:
    if "sql" in case:
        write("classify", case["sql"])

# Masking: the fixture answer and Arrow stream, SQL API shapes, chunks.
answer = (FIXTURES / "mask" / "query_answer.json").read_bytes()
arrow = (FIXTURES / "mask" / "fakesnow_customers.arrows").read_bytes()
sql_api = {"resultSetMetaData": {"numRows": 1, "format": "jsonv2", "rowType": [
    {"name": "NAME", "table": "CUSTOMERS", "type": "text", "nullable": True},
    {"name": "SSN", "table": "CUSTOMERS", "type": "text", "nullable": True},
    {"name": "AMOUNT", "table": "CUSTOMERS", "type": "fixed", "scale": 2, "nullable": False}]},
    "data": [["Ada Lovelace ada@example.com", "123-45-6789", "12.50"]], "code": "090001", "statementHandle": "h"}
for flags in [0, 1]:
    write("mask_json", bytes([flags]) + answer)
    write("mask_json", bytes([flags]) + json.dumps(sql_api).encode())
row = '["1","Ada Lovelace","078-05-1120","-12.50","19000","1714567890.000000000 1440","{\\"k\\":\\"4111 1111 1111 1111\\"}","1"]'
row7 = row.rsplit(",", 1)[0] + "]"
write("mask_json", bytes([7 << 1]) + (row7 + ",\n" + row7).encode())
write("mask_json", bytes([7 << 1]) + ('["1","a@b.io","x","1","2","3","4"]').encode())
write("mask_json", bytes([3 << 1]) + json.dumps({"data": [["1", "AKIAIOSFODNN7EXAMPLE", "x"]]}).encode())
# Percent-encoded values, searched decoded too: short ones and one over 64 bytes.
encoded = ["q%3Dcard%3D4111111111111111", "mailto%3Aada%40example.com", "ssn%3D123%2045%206789",
           "https://x.test/?k=AKIAIOSFODNN7EXAMPLE%2F2024&next=%2Fhome%3Fid%3D4532015112830366"]
text_rowtype = [{"name": f"URL{i}", "type": "text", "nullable": True} for i in range(3)]
write("mask_json", bytes([0]) + json.dumps({"data": {"rowtype": text_rowtype, "rowset": [encoded[:3], encoded[1:]]},
                                            "success": True}).encode())
# Form-encoded values: `+` read as a space where a match may hold one.
form = ["card=4111+1111+1111+1111&ssn=123+45+6789", "iban=DE89+3704+0044+0532+0130+00",
        "key=-----BEGIN+PRIVATE+KEY-----%0AMIIE%2Bx%0A-----END+PRIVATE+KEY-----"]
write("mask_json", bytes([0]) + json.dumps({"data": {"rowtype": text_rowtype, "rowset": [form]},
                                            "success": True}).encode())
write("mask_json", bytes([0]) + b'{"success":false,"code":"000605","message":"no rows","data":null}')
# A quoted value holding a quote, after an apostrophe; a monitoring status quoting an error.
write("mask_json", bytes([0]) + b'{"success":false,"code":"100096","message":"Can\'t parse \'Miles O\'Brien\' as date","data":null}')
write("mask_json", bytes([0]) + json.dumps({"data": {"queries": [{"id": "q", "status": "FAILED_WITH_ERROR",
    "errorMessage": "Numeric value 'ada@example.com' is not recognized"}, {"id": "r", "status": "SUCCESS"}]},
    "success": True}).encode())
for flags in [0, 1, 2, 3, 4, 8, 12]:
    write("mask_arrow", bytes([flags]) + arrow)
write("chunk_framing", b"\x01" + answer)
write("chunk_framing", b"\x00" + arrow)
write("chunk_framing", b"\x00" + gzip.compress(b'["a"],\n["b"]', mtime=0))
write("chunk_framing", b"\x00 \n[\"a\"]")
write("chunk_framing", b"\x02SGP1" + bytes(14))

# Recordings: the committed v1 segments, raw and patched in.
for segment in sorted((FIXTURES / "record" / "v1").iterdir()):
    data = segment.read_bytes()
    write("segment_reader", b"\x00" + data)
write("segment_reader", b"\x01" + bytes([40, 0]) + bytes(40))
write("segment_reader", b"\x02" + bytes([200, 0]) + b"\xff\xff\xff")
for ops in [b"", bytes([0, 0, 10, 0, 1, 0]), bytes([2, 1, 0, 1, 0, 0]), bytes([5, 0, 0, 0, 1, 0]), bytes([7, 0, 0, 0, 3, 9])]:
    write("verify_segments", ops)
