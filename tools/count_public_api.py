#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Counts the names vera's headers make public: every class, function (overloads once), alias,
variable and enumeration declared at namespace scope outside a `detail` namespace, as Doxygen
sees the headers (every optional part preprocessed in, as the API reference is built).

    tools/count_public_api.py [--list] [--check PAGE]

--check PAGE fails (exit 1) unless every public name appears in PAGE as `vera::...` and every
`vera::...` name PAGE lists is public: the API reference by topic stays complete and current.

Needs doxygen (on PATH, or given with --doxygen).
"""
import argparse
import collections
import pathlib
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

ROOT = pathlib.Path(__file__).resolve().parents[1]


def doxyfile(xml_dir: pathlib.Path) -> str:
    text = (ROOT / "docs" / "Doxyfile.in").read_text()
    text = text.replace("@PROJECT_SOURCE_DIR@", str(ROOT)).replace("@PROJECT_VERSION@", "0")
    text = text.replace("@VERA_DOCS_OUTPUT_DIR@", str(xml_dir))
    # Everything outside detail, documented or not, in XML only.
    text = re.sub(r"EXCLUDE_SYMBOLS\s*=(?:[^\n]*\\\n)*[^\n]*\n",
                  "EXCLUDE_SYMBOLS = detail *::detail *::detail::* Eigen Eigen::*\n", text)
    for key, value in (("GENERATE_HTML", "NO"), ("GENERATE_XML", "YES"), ("EXTRACT_ALL", "YES"),
                       ("WARN_AS_ERROR", "NO"), ("WARNINGS", "NO"), ("WARN_IF_UNDOCUMENTED", "NO"),
                       ("INPUT", str(ROOT / "include" / "vera"))):
        text = re.sub(rf"^{key}\s*=(?:[^\n]*\\\n)*[^\n]*$", f"{key} = {value}", text, flags=re.M)
    return text


def public_names(xml_dir: pathlib.Path) -> set:
    index = ET.parse(xml_dir / "xml" / "index.xml").getroot()
    names = set()
    for compound in index.findall("compound"):
        kind, name = compound.get("kind"), compound.findtext("name")
        if "detail" in name.split("::"):
            continue
        if kind in ("class", "struct", "union"):
            if "::" in name and not name.startswith("vera"):
                continue
            # A class nested in the private part of another is not public.
            definition = ET.parse(xml_dir / "xml" / f"{compound.get('refid')}.xml").getroot()
            if definition.find("compounddef").get("prot") in ("private", "protected"):
                continue
            names.add(name.split("<")[0])
        elif kind == "namespace" and name.startswith("vera"):
            for member in compound.findall("member"):
                if member.get("kind") in ("function", "typedef", "variable", "enum"):
                    names.add(f"{name}::{member.findtext('name')}")
    return {n for n in names if n.startswith("vera")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--list", action="store_true", help="print every name")
    parser.add_argument("--doxygen", default="doxygen", help="the doxygen program (default: from PATH)")
    parser.add_argument("--check", type=pathlib.Path, help="a page that must list exactly the public names")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp)
        subprocess.run([args.doxygen, "-"], input=doxyfile(out), text=True, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        names = public_names(out)
    by_namespace = collections.Counter(n.rsplit("::", 1)[0] for n in names)
    if args.list:
        for n in sorted(names):
            print(n)
    for namespace, count in sorted(by_namespace.items()):
        print(f"{count:5d}  {namespace}")
    print(f"{len(names):5d}  total ({by_namespace['vera']} directly in vera::)")
    if args.check:
        listed = set(re.findall(r"`(vera::[A-Za-z_:]+)`", args.check.read_text()))
        missing, stale = sorted(names - listed), sorted(listed - names)
        for name in missing:
            print(f"{args.check}: public name not listed: {name}")
        for name in stale:
            print(f"{args.check}: listed but not public: {name}")
        if missing or stale:
            return 1
        print(f"{args.check}: lists all {len(names)} public names")
    return 0


if __name__ == "__main__":
    sys.exit(main())
