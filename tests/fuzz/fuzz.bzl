"""videotask_fuzz_target: one libFuzzer target and its corpus test.

For NAME (source NAME.cc, seeds in corpus/NAME/, past findings in
regressions/NAME/) this makes:
  :NAME             under --config=fuzz (clang-14, libFuzzer + ASan + UBSan),
                    the fuzzer (`./dev fuzz` runs it); in any other build, a
                    replay binary that runs the files it is given through
                    the target once.
  :NAME_corpus_test a test that replays the seeds and the regressions, so the
                    normal `bazel test //...` (gcc) and --config=asan runs keep
                    every finding fixed.
"""

load("@rules_cc//cc:defs.bzl", "cc_binary", "cc_test")

def videotask_fuzz_target(name, deps = [], size = "small"):
    fuzz_only = {
        "//tests/fuzz:fuzzing": ["-fsanitize=fuzzer"],
        "//conditions:default": [],
    }
    replay = {
        "//tests/fuzz:fuzzing": [],
        "//conditions:default": ["//tests/fuzz:replay_main"],
    }
    cc_binary(
        name = name,
        srcs = [name + ".cc"],
        linkopts = select(fuzz_only),
        deps = deps + ["//tests/fuzz:fuzz_util"] + select(replay),
    )
    cc_test(
        name = name + "_corpus_test",
        size = size,
        srcs = [name + ".cc"],
        args = [
            "tests/fuzz/corpus/" + name,
            "tests/fuzz/regressions/" + name,
        ],
        data = native.glob(["corpus/%s/**" % name, "regressions/%s/**" % name]),
        deps = deps + ["//tests/fuzz:fuzz_util", "//tests/fuzz:replay_main"],
    )
