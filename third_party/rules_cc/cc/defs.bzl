"""A minimal offline stand-in for @rules_cc.

Debian's bazel-rules-cc (0.0.4) needs a newer Bazel than Debian's Bazel 4.2.3,
and Bazel cannot download the real one here. Every macro forwards to the native
rule of the same name, so BUILD files load C++ rules the usual way and a
networked build can swap in upstream rules_cc by editing WORKSPACE alone.
"""

def cc_library(**attrs):
    native.cc_library(**attrs)

def cc_binary(**attrs):
    native.cc_binary(**attrs)

def cc_test(**attrs):
    native.cc_test(**attrs)

def cc_import(**attrs):
    native.cc_import(**attrs)

def cc_proto_library(**attrs):
    native.cc_proto_library(**attrs)

def cc_toolchain(**attrs):
    native.cc_toolchain(**attrs)

def cc_toolchain_suite(**attrs):
    native.cc_toolchain_suite(**attrs)
