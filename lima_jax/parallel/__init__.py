"""Running on many devices and hosts: the mesh and the one sharding rules table (`sharding`),
processes of one job (`distributed`), TPU slices (`tpu_specs`) and host memory."""
