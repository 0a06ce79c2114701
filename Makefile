# Shardset. The cluster targets (cluster-up, cluster-down, images,
# cluster-smoke; CLUSTER=local|kind) live in hack/cluster/cluster.mk.
include hack/cluster/cluster.mk
