"""Worker of test_data_multiprocess.py: one of several processes reading the digits together.

Usage: python tests/data_worker.py PROCESS_ID NUM_PROCESSES PORT DATA_DIR OUT_JSON
Each process has 2 fake CPU devices; the mesh spans all processes. Writes what it saw to OUT_JSON.
"""
import json
import os
import sys


def main() -> None:
    process_id, num_processes, port = (int(a) for a in sys.argv[1:4])
    data_dir, out_path = sys.argv[4], sys.argv[5]
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=num_processes,
                               process_id=process_id, initialization_timeout=90)
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from eca_jax import data

    mesh = Mesh(np.array(jax.devices()).reshape(num_processes, 2), ("data", "fsdp"))
    sharding = NamedSharding(mesh, P(("data", "fsdp")))

    @jax.jit
    def masked_stats(batch):  # what an eval step does: sums over the global batch, padding masked out
        return batch["mask"].sum(), (batch["mask"] * batch["label"]).sum()

    results = {"process_index": jax.process_index(), "process_count": jax.process_count(),
               "device_count": jax.device_count(), "eval": {}}
    for split, global_batch in (("test", 16), ("test[:357]", 12)):
        it = data.make_eval_iterator("digits", global_batch_size=global_batch, image_size=8, sharding=sharding,
                                     data_dir=data_dir, split=split)
        count = label_sum = 0.0
        indices, labels, local_indices = [], [], []
        for batch in it:
            c, s = masked_stats(batch)
            count, label_sum = count + float(c), label_sum + float(s)
            index = multihost_utils.process_allgather(batch["index"], tiled=True)
            mask = multihost_utils.process_allgather(batch["mask"], tiled=True)
            label = multihost_utils.process_allgather(batch["label"], tiled=True)
            indices += index[mask > 0].tolist()
            labels += label[mask > 0].tolist()
            for shard in batch["index"].addressable_shards:
                local_indices += [int(i) for i in np.asarray(shard.data) if i >= 0]
        results["eval"][split] = {"num_examples": it.num_examples, "num_steps": len(it), "count": count,
                                  "label_sum": label_sum, "indices": indices, "labels": labels,
                                  "local_indices": sorted(set(local_indices))}

    train = data.make_train_iterator("digits", global_batch_size=16, image_size=8, seed=0, sharding=sharding,
                                     data_dir=data_dir)
    batch = next(train)
    results["train"] = {"shape": list(batch["image"].shape), "state": train.get_state(),
                        "label_hist": np.bincount(multihost_utils.process_allgather(batch["label"], tiled=True),
                                                  minlength=10).tolist()}
    with open(out_path, "w") as f:
        json.dump(results, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
