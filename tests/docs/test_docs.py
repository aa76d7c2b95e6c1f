"""Checks that keep the documentation true (run by ./dev test).

- every flag of the shipped binaries (ABSL_FLAG in server/ and plugin/, tests
  excluded) appears in docs/ as `--name`;
- every metric the sidecar exports appears in docs/sidecar.md;
- every relative link in the repository's Markdown files resolves, `#anchor`s
  included (GitHub's heading slugs);
- the README's two commands are `./dev run` and `./dev test`, `.ci/run` calls
  the second, and the README stays short (the details live in docs/).

Each check also has a test that feeds it a broken input, so that a check that
cannot fail is noticed.
"""

import fnmatch
import pathlib
import re
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]
README_MAX_LINES = 250


# ---- helpers -----------------------------------------------------------------

def tracked(pattern):
    """Tracked files matching a git pathspec (`*` also matches `/`)."""
    out = subprocess.run(["git", "ls-files", "--", pattern], cwd=ROOT,
                         capture_output=True, text=True, check=False).stdout.split()
    if out:
        return [ROOT / p for p in out]
    # Not a git checkout (an exported tree): walk it instead.
    return [p for p in ROOT.rglob("*") if fnmatch.fnmatch(str(p.relative_to(ROOT)), pattern)
            and "node_modules" not in p.parts and not any(part.startswith("bazel-") for part in p.parts)]


_FLAG = re.compile(r"ABSL_FLAG\(\s*[\w:<>]+\s*,\s*([a-z][a-z0-9_]*)\s*,")


def flags_in(text):
    return set(_FLAG.findall(text))


def shipped_flag_sources():
    files = tracked("server/*.cc") + [f for f in tracked("plugin/*.cc") if f.parent == ROOT / "plugin"]
    return [f for f in files if not f.name.endswith("_test.cc")]


def docs_text():
    return "\n".join(p.read_text() for p in sorted((ROOT / "docs").rglob("*.md")))


def undocumented_flags(flags, docs):
    return sorted(f for f in flags if not re.search(r"--" + re.escape(f) + r"\b", docs))


_METRIC = re.compile(r'"(videotask_[a-z_]+)"')


def exported_metrics():
    names = set()
    for f in tracked("server/*.cc") + tracked("server/*.h"):
        if not f.name.endswith("_test.cc"):
            names |= set(_METRIC.findall(f.read_text()))
    names.discard("videotask_sidecar")
    return names


def strip_code(markdown):
    """The text outside fenced code blocks and inline code spans."""
    return re.sub(r"`[^`\n]*`", "", strip_fences(markdown))


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def anchors(markdown):
    seen, out = {}, set()
    for line in strip_fences(markdown).split("\n"):
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def strip_fences(markdown):
    """The text outside fenced code blocks (one line kept per line)."""
    out, fenced = [], False
    for line in markdown.split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            out.append("")
            continue
        out.append("" if fenced else line)
    return "\n".join(out)


_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def broken_links(md_path, markdown):
    problems = []
    for target in _LINK.findall(strip_code(markdown)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path_part, _, anchor = target.partition("#")
        dest = md_path if not path_part else (md_path.parent / path_part).resolve()
        if not dest.exists():
            problems.append(f"{md_path.relative_to(ROOT)}: {target}: no such file")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
            problems.append(f"{md_path.relative_to(ROOT)}: {target}: no heading with that anchor")
    return problems


def readme_commands(readme):
    section = readme.split("## Two commands", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    cmds = []
    for line in block.split("\n"):
        if not line.strip() or line.startswith((" ", "\t", "#")):
            continue
        cmds.append(line.split("#", 1)[0].strip())
    return cmds


def ci_commands(script):
    return [l.strip() for l in script.split("\n") if l.strip() and not l.lstrip().startswith("#")]


# ---- the checks --------------------------------------------------------------

def test_every_flag_of_the_shipped_binaries_is_in_docs():
    flags = set()
    for f in shipped_flag_sources():
        flags |= flags_in(f.read_text())
    assert len(flags) >= 20, f"found only {sorted(flags)}: is the ABSL_FLAG pattern still right?"
    assert undocumented_flags(flags, docs_text()) == []


def test_every_exported_metric_is_in_docs_sidecar():
    metrics = exported_metrics()
    assert len(metrics) >= 15, sorted(metrics)
    doc = (ROOT / "docs" / "sidecar.md").read_text()
    assert sorted(m for m in metrics if m not in doc) == []


def test_every_relative_link_resolves():
    problems = []
    for md in tracked("*.md"):
        if "node_modules" in md.parts:
            continue
        problems += broken_links(md, md.read_text())
    assert sorted(set(problems)) == []


def test_the_readme_commands_are_the_ones_ci_runs():
    readme = (ROOT / "README.md").read_text()
    assert readme_commands(readme) == ["./dev run", "./dev test"]
    assert "./dev test" in ci_commands((ROOT / ".ci" / "run").read_text())
    dev = (ROOT / "dev").read_text()
    for sub in ("run", "test"):
        assert re.search(rf"^\s*{sub}\)", dev, re.M), f"./dev has no '{sub}' command"


def test_the_readme_is_short():
    n = len((ROOT / "README.md").read_text().split("\n"))
    assert n <= README_MAX_LINES, f"README.md has {n} lines; move details into docs/"


# ---- the checks can fail -----------------------------------------------------

def test_flag_check_catches_an_undocumented_flag():
    src = 'ABSL_FLAG(absl::Duration, poll_interval, absl::Seconds(30), "x");\n' \
          'ABSL_FLAG(int32_t, brand_new_flag, 1, "y");'
    assert flags_in(src) == {"poll_interval", "brand_new_flag"}
    assert undocumented_flags(flags_in(src), "| `--poll_interval` | 30s |") == ["brand_new_flag"]
    # A prefix is not the flag: --archive_dir does not document --archive.
    assert undocumented_flags({"archive"}, "`--archive_dir`") == ["archive"]


def test_link_check_catches_missing_files_and_anchors():
    md = ROOT / "docs" / "probe.md"  # never written: only its parent is used
    text = ("[ok](sidecar.md#flags) [file](nowhere.md) [anchor](sidecar.md#no-such-part)\n"
            "[web](https://example.com/x) `[code](not-a-link.md)`\n```\n[fenced](gone.md)\n```\n")
    problems = broken_links(md, text)
    assert len(problems) == 2, problems
    assert "nowhere.md" in problems[0] and "no-such-part" in problems[1]


def test_slugs_follow_github():
    assert slug("CLI: `videotask` (`//plugin:videotask`)") == "cli-videotask-pluginvideotask"
    assert slug("1. Build and push the image") == "1-build-and-push-the-image"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


def test_command_check_catches_a_third_command():
    readme = "## Two commands\n\n```sh\n./dev run   # x\n./dev test  # y\n            # more\n./dev other\n```\n"
    assert readme_commands(readme) == ["./dev run", "./dev test", "./dev other"]
    assert ci_commands("#!/bin/sh\n# ./dev test\nmake\n") == ["make"]
