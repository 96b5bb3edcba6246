#!/usr/bin/env python3
"""Generates crates/brankas-fhir/data/r4-elements.json from the official R4 (4.0.1)
StructureDefinitions and terminology (hl7.fhir.r4.core, as in the shared corpus).

For every resource and complex data type: each element of its snapshot (path relative to the
type, min, max, type codes, isSummary, the ValueSet of a required binding, contentReference).
For every ValueSet a required binding names and that can be expanded from the package alone
(explicit concepts, or whole code systems): its codes. ValueSets that need filters or other
ValueSets are left out (their bindings are not checked).

Usage: gen_r4_elements.py <fhir-r4-definitions dir> > crates/brankas-fhir/data/r4-elements.json
"""

import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1])
sds = sorted((root / "structure-definitions").glob("StructureDefinition-*.json"))
term = root / "terminology"

types = {}
required = set()
for f in sds:
    sd = json.loads(f.read_text())
    if sd.get("kind") not in ("resource", "complex-type") or sd.get("derivation") == "constraint":
        continue
    t = sd["type"]
    elements = []
    for e in sd["snapshot"]["element"]:
        path = e["path"]
        if path == t:
            continue
        rel = path[len(t) + 1:]
        codes = []
        for ty in e.get("type", []):
            c = ty.get("code", "")
            if c.startswith("http://hl7.org/fhirpath/System."):
                c = "System." + c.rsplit(".", 1)[1]
            codes.append(c)
        b = e.get("binding") or {}
        vs = None
        if b.get("strength") == "required" and b.get("valueSet"):
            vs = b["valueSet"].split("|")[0]
            required.add(vs)
        cref = e.get("contentReference")
        if cref:
            cref = cref.lstrip("#")
            cref = cref[len(t) + 1:] if cref.startswith(t + ".") else cref
        elements.append([rel, e.get("min", 0), e.get("max", "*"), codes, 1 if e.get("isSummary") else 0, vs, cref])
    types[t] = {"kind": sd["kind"], "abstract": bool(sd.get("abstract")), "elements": elements}




by_url = {}
for f in term.glob("*.json"):
    try:
        r = json.loads(f.read_text())
    except ValueError:
        continue
    if "url" in r:
        by_url[(r["resourceType"], r["url"])] = r


def concepts(cs):
    out = []

    def walk(cs_list):
        for c in cs_list:
            out.append(c["code"])
            walk(c.get("concept", []))

    walk(cs.get("concept", []))
    return out


def expand(url):
    vs = by_url.get(("ValueSet", url))
    if vs is None:
        return None
    compose = vs.get("compose") or {}
    if compose.get("exclude"):
        return None
    codes = []
    for inc in compose.get("include", []):
        if inc.get("filter") or inc.get("valueSet"):
            return None
        if inc.get("concept"):
            codes.extend(c["code"] for c in inc["concept"])
            continue
        system = inc.get("system")
        cs = by_url.get(("CodeSystem", system))
        if cs is None or cs.get("content") not in (None, "complete"):
            return None
        codes.extend(concepts(cs))
    return sorted(set(codes)) if codes else None


valuesets = {}
for url in sorted(required):
    codes = expand(url)
    if codes is not None:
        valuesets[url] = codes

json.dump({"fhirVersion": "4.0.1", "types": types, "valuesets": valuesets}, sys.stdout, separators=(",", ":"), sort_keys=True)
sys.stdout.write("\n")
