"""Jobs: built-in model architectures, safetensors weights, and sandboxed torch workers.

Rules:
1. Importing this package, or any module the node imports at start (``errors``,
   ``architectures``, ``tensorfile``, ``spec``, ``manifests``, ``compare``, ``process``,
   ``runner``), never imports torch: a validator or storage node starts fast without it.
   Only ``models``, ``tensors``, ``data``, ``demo``, ``inference``, ``distill`` and the
   ``worker`` entry point import torch, and the node reaches them only inside functions
   that need torch (publishing a demo model) or in the worker process.
2. Weights are safetensors, never pickle: ``tensorfile`` reads and writes the format in
   pure Python (header checked against the bytes before any tensor is touched), and the
   worker loads tensors with ``safetensors.torch.load``.
3. Every tensor is checked three ways before a model runs: the architecture's expected
   names, dtypes and shapes (computed from the config without torch), the manifest, and
   each weight file's header. A mismatch is a ``WeightsMismatchError`` naming the tensor.
4. Jobs run in a separate process (``python -I -m prsm_node.jobs.worker``) with a scrubbed
   environment, a private 0700 work dir as its cwd, rlimits set by the worker before it
   imports torch, and a parent that enforces the wall clock and resident memory and kills
   the whole process group. The worker speaks JSON lines on stdout, nothing else.

Theory of operation: the node fetches a model (``manifests.fetch_model``: manifest block,
then each weight file's DAG, every tensor checked), builds a ``JobRequest`` and submits it
to the ``JobRunner``; the runner queues it, writes the work dir (``process.py``), starts a
worker, relays progress, and hands back a ``JobResult`` (output bytes plus the worker's
info) or a typed error. The node then stores the output (``manifests.store_output``) or
publishes a distilled student (``manifests.publish_student``).
"""
