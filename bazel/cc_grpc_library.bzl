"""cc_grpc_library: C++ gRPC service stubs from a proto_library.

Runs protoc with grpc_cpp_plugin over the direct sources of one
proto_library (the same package as the rule) and wraps the generated
.grpc.pb.{h,cc} in a cc_library that depends on the matching
cc_proto_library. Mirrors the attribute names of gRPC's own rule.
"""

load("@rules_cc//cc:defs.bzl", "cc_library")

def _grpc_sources_impl(ctx):
    proto = ctx.attr.proto[ProtoInfo]
    outs = []
    srcs = []
    root = ctx.label.workspace_root + "/" if ctx.label.workspace_root else ""
    pkg = root + ctx.label.package + "/" if ctx.label.package else root
    for src in proto.direct_sources:
        if src.owner.workspace_root != ctx.label.workspace_root or not src.path.startswith(pkg):
            fail("cc_grpc_library must live in the package of its .proto files (or above)")
        rel = src.path[len(pkg):-len(".proto")]
        outs.append(ctx.actions.declare_file(rel + ".grpc.pb.h"))
        outs.append(ctx.actions.declare_file(rel + ".grpc.pb.cc"))
        srcs.append(src.path[len(root):])  # the import path
    descriptors = proto.transitive_descriptor_sets
    args = ctx.actions.args()
    args.add("--plugin=protoc-gen-grpc=" + ctx.executable._plugin.path)
    args.add("--grpc_out=" + ctx.bin_dir.path + ("/" + ctx.label.workspace_root if ctx.label.workspace_root else ""))
    args.add_joined("--descriptor_set_in", descriptors, join_with = ":")
    args.add_all(srcs)
    ctx.actions.run(
        executable = ctx.executable._protoc,
        arguments = [args],
        inputs = descriptors,
        tools = [ctx.executable._plugin],
        outputs = outs,
        mnemonic = "GrpcCppPlugin",
        progress_message = "Generating gRPC C++ stubs for %s" % ctx.label,
    )
    return [DefaultInfo(files = depset(outs))]

_grpc_sources = rule(
    implementation = _grpc_sources_impl,
    attrs = {
        "proto": attr.label(mandatory = True, providers = [ProtoInfo]),
        "_protoc": attr.label(
            default = "@com_google_protobuf//:protoc",
            executable = True,
            cfg = "exec",
        ),
        "_plugin": attr.label(
            default = "@com_github_grpc_grpc//:grpc_cpp_plugin",
            executable = True,
            cfg = "exec",
        ),
    },
)

def cc_grpc_library(name, srcs, deps, visibility = None, **kwargs):
    """C++ gRPC stubs for the proto_library in srcs; deps: its cc_proto_library."""
    if len(srcs) != 1:
        fail("cc_grpc_library takes exactly one proto_library in srcs")
    _grpc_sources(name = name + "_codegen", proto = srcs[0])
    cc_library(
        name = name,
        srcs = [":" + name + "_codegen"],
        deps = deps + ["@com_github_grpc_grpc//:grpc++"],
        visibility = visibility,
        **kwargs
    )
