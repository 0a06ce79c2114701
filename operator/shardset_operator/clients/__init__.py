"""The only modules that do I/O: the Kubernetes API (`kube`), the nodes' HTTP API
(`nodeclient`), and one observation of a store through both (`observe`)."""
