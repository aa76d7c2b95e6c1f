"""Debian's system libraries as Bazel repositories with their usual names.

Bazel cannot download anything on the machines this project builds on, so
gRPC, Protobuf, Abseil, GoogleTest, libcurl, cpp-httplib, nlohmann/json,
hiredis and OpenSSL (libcrypto, libssl) come from Debian's -dev packages. Each
repository here is generated at fetch time: link flags come from pkg-config,
tools and .proto files are symlinked from the system, so no absolute path is
committed. Headers live in /usr/include, which the auto-configured C++
toolchain already allows.

A machine with network access can replace any of these with the upstream
source archive by editing WORKSPACE alone; BUILD files do not change.
"""

def _pkg_config(ctx, modules, what = "--libs"):
    if not modules:
        return []
    pkg_config = ctx.which("pkg-config")
    if not pkg_config:
        fail("pkg-config not found: run ./dev to install the build dependencies")
    res = ctx.execute([pkg_config, what] + modules)
    if res.return_code != 0:
        fail("pkg-config %s %s failed (missing -dev package? run ./dev): %s" %
             (what, " ".join(modules), res.stderr))
    return [f for f in res.stdout.strip().split(" ") if f]

def _lib(ctx, name, modules = [], extra_linkopts = [], deps = [], defines = None):
    """Returns the text of a cc_library whose flags come from pkg-config."""
    linkopts = _pkg_config(ctx, modules) + extra_linkopts
    cflags = _pkg_config(ctx, modules, "--cflags")
    if defines == None:
        defines = [f[2:] for f in cflags if f.startswith("-D")]
    return """
cc_library(
    name = {name},
    linkopts = {linkopts},
    defines = {defines},
    deps = {deps},
    visibility = ["//visibility:public"],
)
""".format(
        name = repr(name),
        linkopts = repr(linkopts),
        defines = repr(defines),
        deps = repr(deps),
    )

def _system_tool(ctx, tool, name):
    path = ctx.which(tool)
    if not path:
        fail("%s not found: run ./dev to install the build dependencies" % tool)
    ctx.symlink(path, name + "_bin")
    return """
sh_binary(
    name = {name},
    srcs = [{src}],
    visibility = ["//visibility:public"],
)
""".format(name = repr(name), src = repr(name + "_bin"))

# ---- Abseil ---------------------------------------------------------------

# Bazel package -> {target: pkg-config module}.
_ABSL = {
    "absl/base": {"core_headers": "absl_core_headers", "base": "absl_base"},
    "absl/cleanup": {"cleanup": "absl_cleanup"},
    "absl/container": {
        "btree": "absl_btree",
        "flat_hash_map": "absl_flat_hash_map",
        "flat_hash_set": "absl_flat_hash_set",
        "node_hash_map": "absl_node_hash_map",
        "inlined_vector": "absl_inlined_vector",
    },
    "absl/flags": {
        "flag": "absl_flags",
        "parse": "absl_flags_parse",
        "usage": "absl_flags_usage",
        "reflection": "absl_flags_reflection",
        "commandlineflag": "absl_flags_commandlineflag",
    },
    "absl/functional": {
        "any_invocable": "absl_any_invocable",
        "bind_front": "absl_bind_front",
        "function_ref": "absl_function_ref",
    },
    "absl/memory": {"memory": "absl_memory"},
    "absl/random": {"random": "absl_random_random", "distributions": "absl_random_distributions"},
    "absl/status": {"status": "absl_status", "statusor": "absl_statusor"},
    "absl/strings": {
        "strings": "absl_strings",
        "str_format": "absl_str_format",
        "cord": "absl_cord",
    },
    "absl/synchronization": {"synchronization": "absl_synchronization"},
    "absl/time": {"time": "absl_time"},
    "absl/types": {"optional": "absl_optional", "span": "absl_span", "variant": "absl_variant"},
}

def _absl_impl(ctx):
    ctx.file("WORKSPACE", 'workspace(name = "%s")\n' % ctx.name)
    ctx.file("BUILD.bazel", "")
    for pkg, targets in _ABSL.items():
        text = 'load("@rules_cc//cc:defs.bzl", "cc_library")\n'
        for target, module in targets.items():
            text += _lib(ctx, target, [module])
        ctx.file(pkg + "/BUILD.bazel", text)

absl_system_repository = repository_rule(
    implementation = _absl_impl,
    local = True,
)

# ---- Protobuf -------------------------------------------------------------

_WKT = ["any", "api", "duration", "empty", "field_mask", "source_context", "struct", "timestamp", "type", "wrappers", "descriptor"]

def _protobuf_impl(ctx):
    ctx.file("WORKSPACE", 'workspace(name = "%s")\n' % ctx.name)
    include = ctx.path("/usr/include/google/protobuf")
    if not include.exists:
        fail("Protobuf's .proto files are missing: run ./dev (libprotobuf-dev)")
    text = 'load("@rules_cc//cc:defs.bzl", "cc_library")\n'
    text += _lib(ctx, "protobuf", ["protobuf"])
    text += _lib(ctx, "protobuf_headers", [])
    text += _system_tool(ctx, "protoc", "protoc")
    for wkt in _WKT:
        src = "google/protobuf/%s.proto" % wkt
        ctx.symlink(include.get_child(wkt + ".proto"), src)
        deps = []
        if wkt == "api":
            deps = [":source_context_proto", ":type_proto"]
        elif wkt == "type":
            deps = [":any_proto", ":source_context_proto"]
        text += """
proto_library(
    name = "{name}_proto",
    srcs = ["{src}"],
    deps = {deps},
    visibility = ["//visibility:public"],
)
""".format(name = wkt, src = src, deps = repr(deps))
    text += """
proto_lang_toolchain(
    name = "cc_toolchain",
    command_line = "--cpp_out=$(OUT)",
    runtime = ":protobuf",
    blacklisted_protos = [{wkts}],
    visibility = ["//visibility:public"],
)
""".format(wkts = ", ".join(['":%s_proto"' % w for w in _WKT]))
    ctx.file("BUILD.bazel", text)

protobuf_system_repository = repository_rule(
    implementation = _protobuf_impl,
    local = True,
)

# ---- gRPC -----------------------------------------------------------------

def _grpc_impl(ctx):
    ctx.file("WORKSPACE", 'workspace(name = "%s")\n' % ctx.name)
    text = 'load("@rules_cc//cc:defs.bzl", "cc_library")\n'
    text += _lib(ctx, "grpc++", ["grpc++", "protobuf"])
    text += _lib(ctx, "grpc++_reflection", [], ["-lgrpc++_reflection"], [":grpc++"])
    text += _system_tool(ctx, "grpc_cpp_plugin", "grpc_cpp_plugin")

    # grpc.health.v1, for clients of the standard health service.
    health = ctx.path("/usr/share/grpc-proto/grpc/health/v1/health.proto")
    if not health.exists:
        fail("grpc/health/v1/health.proto is missing: run ./dev (grpc-proto)")
    ctx.symlink(health, "grpc/health/v1/health.proto")
    text = 'load("@videotask//bazel:cc_grpc_library.bzl", "cc_grpc_library")\n' + text
    text += """
proto_library(
    name = "health_proto",
    srcs = ["grpc/health/v1/health.proto"],
    visibility = ["//visibility:public"],
)

cc_proto_library(
    name = "health_cc_proto",
    deps = [":health_proto"],
    visibility = ["//visibility:public"],
)

cc_grpc_library(
    name = "health_cc_grpc",
    srcs = [":health_proto"],
    deps = [":health_cc_proto"],
    visibility = ["//visibility:public"],
)
"""
    ctx.file("BUILD.bazel", text)

grpc_system_repository = repository_rule(
    implementation = _grpc_impl,
    local = True,
)

# ---- Small libraries ------------------------------------------------------

def _simple_impl(ctx):
    ctx.file("WORKSPACE", 'workspace(name = "%s")\n' % ctx.name)
    for header in ctx.attr.headers:
        # Debian puts some headers under /usr/include/<multiarch triplet>/.
        found = ctx.execute(["sh", "-c", 'ls /usr/include/"$1" /usr/include/*/"$1" 2>/dev/null', "-", header])
        if not found.stdout.strip():
            fail("%s is missing from /usr/include: run ./dev to install the build dependencies" % header)
    text = 'load("@rules_cc//cc:defs.bzl", "cc_library")\n'
    for target, spec in ctx.attr.targets.items():
        parts = spec.split(" ") if spec else []
        modules = [p for p in parts if not p.startswith("-") and not p.startswith(":")]
        linkopts = [p for p in parts if p.startswith("-")]
        deps = [p for p in parts if p.startswith(":")]
        text += _lib(ctx, target, modules, linkopts, deps)
    ctx.file("BUILD.bazel", text)

simple_system_repository = repository_rule(
    implementation = _simple_impl,
    attrs = {
        # target -> space-separated pkg-config modules, -linkopts and :deps.
        "targets": attr.string_dict(mandatory = True),
        "headers": attr.string_list(),
    },
    local = True,
)

def system_libs():
    """Declares every system-library repository the project uses."""
    absl_system_repository(name = "com_google_absl")
    protobuf_system_repository(name = "com_google_protobuf")
    grpc_system_repository(name = "com_github_grpc_grpc")
    simple_system_repository(
        name = "com_google_googletest",
        targets = {
            "gtest": "gtest gmock",
            "gtest_main": "gtest_main :gtest",
        },
        headers = ["gtest/gtest.h", "gmock/gmock.h"],
    )
    simple_system_repository(
        name = "com_github_curl_curl",
        targets = {"curl": "libcurl"},
        headers = ["curl/curl.h"],
    )
    simple_system_repository(
        name = "com_github_yhirose_cpp_httplib",
        targets = {"httplib": "cpp-httplib"},
        headers = ["httplib.h"],
    )
    simple_system_repository(
        name = "com_github_redis_hiredis",
        targets = {"hiredis": "hiredis"},
        headers = ["hiredis/async.h"],
    )
    simple_system_repository(
        name = "com_github_openssl_openssl",
        targets = {"crypto": "libcrypto", "ssl": "libssl :crypto"},
        headers = ["openssl/hmac.h", "openssl/ssl.h"],
    )
    simple_system_repository(
        name = "com_github_nlohmann_json",
        targets = {"json": ""},
        headers = ["nlohmann/json.hpp"],
    )
