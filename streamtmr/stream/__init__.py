"""The streaming path: wire protocol, window buffer, the Node and its sinks."""
