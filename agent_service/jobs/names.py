"""Job function names: the contract between the web process (enqueue) and the worker."""

INVOKE_AGENT = "invoke_agent_async"
INVOKE_AGENT_STREAMING = "invoke_agent_with_streaming"

KIND_INVOKE = "invoke"
KIND_STREAM = "stream"

JOB_FOR_KIND = {KIND_INVOKE: INVOKE_AGENT, KIND_STREAM: INVOKE_AGENT_STREAMING}
