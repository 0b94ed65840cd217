#!/usr/bin/env python3
"""Tests of scripts/check_layering.py on small trees written to a temporary folder.

Each case writes a few source files, runs the script as the build does (a separate process,
--root TREE) and checks its exit status and the file:line it reports.

usage: check_layering_test.py [unittest args]   (ctest: layering.script)
"""

import os
import subprocess
import sys
import tempfile
import unittest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts",
                      "check_layering.py")

# A tree that follows the layering: every allowed kind of arrow once.
GOOD_TREE = {
    "kernels/kv_format.h": "#include <cstdint>\n",
    "kernels/cpu/ops.cc": '#include "kernels/kv_format.h"\n#include "kernels/cpu/ops_internal.h"\n'
                          '#include "kernels/cpu/x86.inc"\n',
    "kernels/cpu/ops_internal.h": "",
    "kernels/cpu/x86.inc": "",
    "kernels/cuda/ops.cu": '#include "common.cuh"\n',
    "kernels/cuda/common.cuh": "",
    "engine/common/status_macros.h": '#include "absl/status/status.h"\n',
    "engine/kv/block_pool.h": '#include "engine/common/status_macros.h"\n'
                              '#include "kernels/kv_format.h"\n',
    "engine/model/llama_model.h": '#include "engine/kv/block_pool.h"\n',
    "engine/serving/scheduler.h": '#include "engine/model/llama_model.h"\n',
    "engine/runtime/local_model.h": '#include "engine/serving/scheduler.h"\n',
    "engine/eval/perplexity.cc": '#include "engine/runtime/local_model.h"\n'
                                 '#include "kernels/kv_format.h"\n',
    "server/grpc/service.cc": '#include "engine/eval/perplexity.h"\n'
                              '#include "kvserve/v1/generation.grpc.pb.h"\n'
                              '#include "grpcpp/grpcpp.h"\n#include "server/config/config.h"\n',
    "server/config/config.h": '#include "yaml-cpp/yaml.h"\n',
    "tools/serve_command.cc": '#include "server/config/config.h"\n#include "tools/flags.h"\n'
                              '#include "engine/runtime/local_model.h"\n',
    "tools/flags.h": "",
}


class CheckLayeringTest(unittest.TestCase):
    def run_on(self, extra=None, remove=()):
        """Writes GOOD_TREE plus `extra` (path -> text) and runs the check on it."""
        files = dict(GOOD_TREE)
        files.update(extra or {})
        for path in remove:
            del files[path]
        with tempfile.TemporaryDirectory() as root:
            for path, text in files.items():
                full = os.path.join(root, path)
                os.makedirs(os.path.dirname(full), exist_ok=True)
                with open(full, "w") as f:
                    f.write(text)
            stamp = os.path.join(root, "layering.stamp")
            p = subprocess.run([sys.executable, SCRIPT, "--root", root, "--stamp", stamp],
                               capture_output=True, text=True)
            return p.returncode, p.stderr, os.path.exists(stamp)

    def assert_fails_at(self, extra, where, *words):
        rc, err, stamped = self.run_on(extra)
        self.assertEqual(rc, 1, err)
        self.assertFalse(stamped)
        self.assertIn(where, err)
        for w in words:
            self.assertIn(w, err)

    def test_good_tree_passes_and_writes_the_stamp(self):
        rc, err, stamped = self.run_on()
        self.assertEqual(rc, 0, err)
        self.assertEqual(err, "")
        self.assertTrue(stamped)

    def test_engine_folder_including_a_folder_above_it_fails(self):
        self.assert_fails_at(
            {"engine/kv/prefix_index.cc": '#include "absl/strings/str_cat.h"\n\n'
                                          '#include "engine/serving/scheduler.h"\n'},
            "engine/kv/prefix_index.cc:3:", 'wrong-way include "engine/serving/scheduler.h"',
            "engine/kv -> engine/serving")

    def test_cycle_through_runtime_fails(self):
        # serving -> runtime would close a cycle with runtime -> serving.
        self.assert_fails_at(
            {"engine/serving/engine.h": '#include "engine/runtime/local_model.h"\n'},
            "engine/serving/engine.h:1:", "engine/serving -> engine/runtime")

    def test_kernels_including_the_engine_fails(self):
        self.assert_fails_at({"kernels/cpu/attn.cc": '#include "engine/kv/block_pool.h"\n'},
                             "kernels/cpu/attn.cc:1:", "kernels -> engine/kv")

    def test_server_including_tools_fails(self):
        self.assert_fails_at({"server/grpc/x.cc": '#include "tools/flags.h"\n'},
                             "server/grpc/x.cc:1:", "server -> tools")

    def test_source_including_tests_fails(self):
        self.assert_fails_at({"tools/x.cc": '#include "tests/server/grpc/server_process.h"\n'},
                             "tools/x.cc:1:", "tools -> tests")

    def test_engine_including_grpc_protobuf_or_yaml_fails(self):
        for header in ('"grpcpp/grpcpp.h"', "<google/protobuf/message.h>",
                       '"kvserve/v1/generation.pb.h"', '"yaml-cpp/yaml.h"',
                       '"prometheus/counter.h"'):
            self.assert_fails_at({"engine/runtime/stats.h": f"#include {header}\n"},
                                 "engine/runtime/stats.h:1:", header)

    def test_kernels_including_protobuf_fails(self):
        self.assert_fails_at({"kernels/dtype.h": "#include <google/protobuf/message.h>\n"},
                             "kernels/dtype.h:1:", "protobuf")

    def test_internal_header_from_another_folder_fails(self):
        self.assert_fails_at({"kernels/dtype.cc": '#include "kernels/cpu/ops_internal.h"\n'},
                             "kernels/dtype.cc:1:", "private to kernels/cpu/")
        self.assert_fails_at({"engine/kv/pool.cc": '#include "kernels/cpu/x86.inc"\n'},
                             "engine/kv/pool.cc:1:", "private to kernels/cpu/")

    def test_engine_subfolder_missing_from_the_table_fails(self):
        self.assert_fails_at({"engine/backend/backend.h": ""},
                             "engine/backend/backend.h:1:", "not in the layering table")

    def test_every_offence_is_reported(self):
        rc, err, _ = self.run_on({
            "engine/common/a.h": '#include "engine/kv/block_pool.h"\n',
            "engine/tokenizer/b.h": '\n#include "engine/model/llama_model.h"\n'})
        self.assertEqual(rc, 1)
        self.assertIn("engine/common/a.h:1:", err)
        self.assertIn("engine/tokenizer/b.h:2:", err)
        self.assertIn("2 wrong-way include(s)", err)

    def test_the_real_table_is_acyclic_and_lists_the_allowed_arrows(self):
        p = subprocess.run([sys.executable, SCRIPT, "--print-table"], capture_output=True,
                           text=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        lines = {l.split("->")[0].strip(): l.split("->")[1] for l in p.stdout.splitlines()}
        self.assertIn("(nothing)", lines["kernels"])
        self.assertNotIn("engine", lines["kernels"])
        self.assertNotIn("server", lines["engine/eval"])
        self.assertNotIn("proto", lines["engine/eval"])
        self.assertNotIn("tools", lines["server"])
        self.assertIn("engine/serving", lines["engine/runtime"])
        self.assertNotIn("engine/runtime", lines["engine/serving"])


if __name__ == "__main__":
    unittest.main()
