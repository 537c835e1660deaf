"""Test support: real local services (kube-apiserver + etcd) and helpers around them."""
