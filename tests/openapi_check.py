"""Checks an OpenAPI document as tests/openapi.rs asks (Debian's python3-jsonschema):

  python3 tests/openapi_check.py OPENAPI_JSON README_MD

1. the document against the OpenAPI 3.1 schema (tests/fixtures/openapi/, the OpenAPI
   Initiative's schema of 2022-10-07, Apache-2.0);
2. each component schema against JSON Schema 2020-12, and each example in the document
   against its schema;
3. every curl in the README's sh blocks: its method and path are an operation of the document,
   its JSON body (-d) valid against that operation's request schema; a json block right
   after such a block is valid against the operation's first 2xx JSON answer.

Prints a JSON summary on stdout; exits 1 with the reasons on stderr if anything fails.
"""
import json
import os
import re
import shlex
import sys

import jsonschema

HERE = os.path.dirname(os.path.abspath(__file__))
META = os.path.join(HERE, "fixtures", "openapi", "oas-3.1-schema-2022-10-07.json")
failures = []


def fail(msg):
    failures.append(msg)


def main():
    doc = json.load(open(sys.argv[1]))
    readme = open(sys.argv[2]).read()
    meta = json.load(open(META))
    for e in jsonschema.Draft202012Validator(meta).iter_errors(doc):
        fail(f"OpenAPI schema: {'/'.join(map(str, e.absolute_path))}: {e.message}")

    components = doc["components"]

    def validator(schema):
        # $refs inside resolve against the document's components.
        return jsonschema.Draft202012Validator({**schema, "components": components})

    for name, schema in components["schemas"].items():
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as e:
            fail(f"schema {name}: {e.message}")

    def operation(method, path):
        for template, item in doc["paths"].items():
            pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
            if re.match(pattern, path) and method in item:
                return template, item[method]
        return None, None

    def check(schema, value, where):
        errors = list(validator(schema).iter_errors(value))
        for e in errors:
            fail(f"{where}: {'/'.join(map(str, e.absolute_path))}: {e.message}")
        return not errors

    doc_examples = 0
    for template, item in doc["paths"].items():
        for method, op in item.items():
            rb = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            if "example" in rb:
                check(rb["schema"], rb["example"], f"{method} {template} request example")
                doc_examples += 1
            for status, answer in op["responses"].items():
                media = answer.get("content", {}).get("application/json", {})
                if "example" in media:
                    check(media["schema"], media["example"], f"{method} {template} {status} example")
                    doc_examples += 1

    # Positions, to pair a json block with the sh block right before it.
    spans = [(m.start(), m.end(), m.group(1), m.group(2)) for m in re.finditer(r"```(\w*)\n(.*?)```", readme, re.S)]
    requests = answers = 0
    previous = None
    for start, end, lang, text in spans:
        if lang == "json" and previous is not None and readme[previous[0]:start].strip() == "":
            method, path = previous[1]
            template, op = operation(method, path)
            responses = op["responses"]
            ok = [s for s in sorted(responses) if s.startswith("2") and "application/json" in responses[s].get("content", {})]
            if not ok:
                fail(f"README answer to {method} {path}: the document has no JSON 2xx answer")
            else:
                value = json.loads(text)
                check(responses[ok[0]]["content"]["application/json"]["schema"], value, f"README answer to {method} {path}")
                answers += 1
        previous = None
        if lang != "sh":
            continue
        curls = [c for c in re.split(r"\n(?=curl )", text.replace("\\\n", " ")) if c.startswith("curl ")]
        last = None
        for c in curls:
            words = shlex.split(c.split("\n")[0].split(" # ")[0], comments=False)
            url = next(w for w in words if w.startswith("http"))
            path = re.sub(r"^https?://[^/]+", "", url).split("?")[0]
            path = path.replace("$ID", "x").replace("${ID}", "x")
            method = None
            data = None
            for i, w in enumerate(words):
                if w == "-X":
                    method = words[i + 1].lower()
                if w == "-d":
                    data = words[i + 1]
            method = method or ("post" if data is not None else "get")
            template, op = operation(method, path)
            if op is None:
                fail(f"README: {method.upper()} {path} is not in the document")
                continue
            requests += 1
            if data is not None:
                schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
                if schema is None:
                    fail(f"README: {method.upper()} {path} sends a body the document does not take")
                else:
                    check(schema, json.loads(data), f"README request {method.upper()} {path}")
            last = (method, path)
        if len(curls) == 1 and last is not None:
            previous = (end, last)

    summary = {"readme_requests": requests, "readme_answers": answers, "document_examples": doc_examples,
               "schemas": len(components["schemas"])}
    print(json.dumps(summary))
    if failures:
        print("\n".join(failures), file=sys.stderr)
        sys.exit(1)


main()
