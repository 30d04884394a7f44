#!/usr/bin/python3
"""Grammar-constrained output judged by independent recognisers: for each JSON Schema, sampled
answers (temperature 1.0, one per seed) must validate with python3-jsonschema; for each GBNF
grammar, with a regular expression or a parser written here. An answer cut off by the token limit
is counted as incomplete, not judged. Prints the table; exits 1 on any invalid complete answer, or
when a case completes no answer at all.

usage: validity.py QLLM MODEL SEEDS
"""
import ast, json, os, re, subprocess, sys, tempfile

import jsonschema

qllm, model, seeds = sys.argv[1], sys.argv[2], int(sys.argv[3])
runner = os.environ.get("QLLM_RUNNER", "").split()
PROMPT = "And God said unto Moses,"

SCHEMAS = [
    ("enum field", {"type": "object", "properties": {"answer": {"enum": ["yes", "no", "maybe"]}},
                    "required": ["answer"], "additionalProperties": False}),
    ("integer range", {"type": "integer", "minimum": -50, "maximum": 1234}),
    ("string and integer bounds", {"type": "object", "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "exclusiveMaximum": 150.5},
        "ok": {"type": "boolean"}}, "required": ["name", "age"], "additionalProperties": False}),
    ("number bounds", {"type": "object", "properties": {
        "price": {"type": "number", "minimum": 0, "exclusiveMaximum": 1000},
        "score": {"type": "number", "minimum": -1.5, "maximum": 1.5},
        "ratio": {"type": "number", "exclusiveMinimum": 0.1, "exclusiveMaximum": 0.3}},
        "required": ["price", "score", "ratio"], "additionalProperties": False}),
    ("array with bounds", {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9},
                           "minItems": 2, "maxItems": 5}),
    ("nested objects", {"type": "object", "properties": {
        "person": {"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 12},
            "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                                         "zip": {"type": "string", "minLength": 5, "maxLength": 5}},
                        "required": ["city", "zip"], "additionalProperties": False}},
            "required": ["name", "address"], "additionalProperties": False}},
        "required": ["person"], "additionalProperties": False}),
    ("anyOf", {"anyOf": [{"type": "string", "maxLength": 5}, {"type": "integer", "exclusiveMinimum": 10},
                         {"type": "null"}]}),
    ("oneOf and type lists", {"type": "object", "properties": {
        "v": {"oneOf": [{"type": "string", "maxLength": 6}, {"type": "number"}]},
        "w": {"type": ["boolean", "null"]}}, "required": ["v", "w"], "additionalProperties": False}),
    ("$ref recursion", {"$defs": {"node": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 8},
        "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}},
        "required": ["name"], "additionalProperties": False}}, "$ref": "#/$defs/node"}),
    ("unicode and escapes", {"type": "object", "properties": {
        "greek": {"const": "\u03b1\u03b2\u03b3 \"quoted\" \\ \u00e9"},
        "text": {"type": "string", "minLength": 3, "maxLength": 12}},
        "required": ["greek", "text"], "additionalProperties": False}),
    ("maps and mixed enums", {"type": "object", "additionalProperties": {
        "enum": [1, "two", [3], {"four": 4}, None, True]}}),
]


def arithmetic(s):  # sums and differences of 1-3 digit numbers, parenthesised, no spaces
    if not re.fullmatch(r"[0-9+\-()]+", s):
        return False
    try:
        tree = ast.parse(s, mode="eval")
    except SyntaxError:
        return False
    def ok(n):
        if isinstance(n, ast.BinOp):
            return isinstance(n.op, (ast.Add, ast.Sub)) and ok(n.left) and ok(n.right)
        return isinstance(n, ast.Constant) and isinstance(n.value, int) and n.value < 1000
    return ok(tree.body) and not re.search(r"\d{4}|(^|[^0-9])0\d", s) and "--" not in s and "+-" not in s \
        and not s.startswith("-") and "(-" not in s and "(+" not in s


GRAMMARS = [
    ("yes or no", 'root ::= " " ("yes" | "no") "."', lambda s: re.fullmatch(r" (yes|no)\.", s)),
    ("date", 'root ::= [0-9]{4} "-" ("0" [1-9] | "1" [0-2]) "-" ("0" [1-9] | [12] [0-9] | "3" [01])',
     lambda s: re.fullmatch(r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])", s)),
    ("list", 'root ::= "- " item ("\\n- " item){2,4}\nitem ::= [a-z] [a-z ]{0,19}',
     lambda s: re.fullmatch(r"- [a-z][a-z ]{0,19}(\n- [a-z][a-z ]{0,19}){2,4}", s)),
    ("arithmetic", 'root ::= expr\nexpr ::= term (("+" | "-") term){0,3}\nterm ::= num | "(" inner ")"\n'
                   'inner ::= num (("+" | "-") num){0,3}\nnum ::= [1-9] [0-9]{0,2} | "0"',
     lambda s: arithmetic(s)),
    ("csv row", 'root ::= field "," field "," field\nfield ::= [a-zA-Z]{1,12} | "\\"" [^"\\n]{0,30} "\\""',
     lambda s: re.fullmatch(r'([a-zA-Z]{1,12}|"[^"\n]{0,30}")(,([a-zA-Z]{1,12}|"[^"\n]{0,30}")){2}', s)),
]


def generate(flag, path, seed):
    cmd = runner + [qllm, "run", "-m", model, "-p", PROMPT, flag, path, "--temp", "1", "--top-k", "0",
                    "--top-p", "1", "--min-p", "0", "-s", str(seed), "-n", "300"]
    r = subprocess.run(cmd, capture_output=True, timeout=300)
    if r.returncode != 0:
        sys.exit("qllm failed: %s\n%s" % (" ".join(cmd), r.stderr.decode(errors="replace")))
    out = r.stdout.decode("utf-8")  # strict: the output must be valid UTF-8
    assert out.startswith(PROMPT), out
    return out[len(PROMPT):].rstrip("\n"), b"stop: eos" in r.stderr


# the judges themselves reject what they must
assert arithmetic("(1+2)-30") and not arithmetic("1++2") and not arithmetic("01") and not arithmetic("(1")
assert not GRAMMARS[1][2]("2024-13-01") and GRAMMARS[1][2]("2024-12-31")

failed = False
rows = []
with tempfile.TemporaryDirectory() as d:
    cases = [("schema", name, schema) for name, schema in SCHEMAS] + [("gbnf", name, g) for name, g, _ in GRAMMARS]
    judges = {name: j for name, _, j in GRAMMARS}
    for kind, name, spec in cases:
        path = os.path.join(d, "case")
        with open(path, "w") as f:
            f.write(json.dumps(spec) if kind == "schema" else spec + "\n")
        complete = valid = 0
        for seed in range(1, seeds + 1):
            text, ended = generate("--json-schema" if kind == "schema" else "--grammar-file", path, seed)
            if not ended:
                continue
            complete += 1
            if kind == "schema":
                try:
                    jsonschema.validate(json.loads(text), spec, cls=jsonschema.Draft202012Validator)
                    valid += 1
                except (ValueError, jsonschema.ValidationError) as e:
                    print("INVALID (%s, seed %d): %r: %s" % (name, seed, text, e))
                    failed = True
            elif judges[name](text):
                valid += 1
            else:
                print("INVALID (%s, seed %d): %r" % (name, seed, text))
                failed = True
        if complete == 0:
            print("no complete answer for %s in %d seeds" % (name, seeds))
            failed = True
        rows.append((kind, name, complete, valid, seeds - complete))
print("| kind | case | complete | valid | cut off at 300 tokens |")
print("|---|---|---:|---:|---:|")
for kind, name, c, v, cut in rows:
    print("| %s | %s | %d | %d | %d |" % (kind, name, c, v, cut))
sys.exit(1 if failed else 0)
