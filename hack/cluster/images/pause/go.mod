module shardset.local/hack/cluster/pause

go 1.24.0
