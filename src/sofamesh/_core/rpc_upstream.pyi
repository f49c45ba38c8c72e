# The upstream side of the RPC proxy: its classes are used through rpc_proxy.RpcProxyConfig.
