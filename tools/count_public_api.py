#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Counts the names vera's headers make public: every class, function (overloads once), alias,
variable and enumeration declared at namespace scope outside a `detail` namespace, as Doxygen
sees the headers (every optional part preprocessed in, as the API reference is built).

    tools/count_public_api.py [--list]

Needs doxygen on PATH.
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
            names.add(name.split("<")[0])
        elif kind == "namespace" and name.startswith("vera"):
            for member in compound.findall("member"):
                if member.get("kind") in ("function", "typedef", "variable", "enum"):
                    names.add(f"{name}::{member.findtext('name')}")
    return {n for n in names if n.startswith("vera")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--list", action="store_true", help="print every name")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp)
        subprocess.run(["doxygen", "-"], input=doxyfile(out), text=True, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        names = public_names(out)
    by_namespace = collections.Counter(n.rsplit("::", 1)[0] for n in names)
    if args.list:
        for n in sorted(names):
            print(n)
    for namespace, count in sorted(by_namespace.items()):
        print(f"{count:5d}  {namespace}")
    print(f"{len(names):5d}  total ({by_namespace['vera']} directly in vera::)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
