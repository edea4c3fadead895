"""File transfer: name checks (``names``), disk work (``store``) and their errors.

The transfer state machine is ``agent.session.filetransfer`` (sans-I/O), the wire is
``agent.protocol.files``, and the direct TCP fast path for bulk bytes is
``agent.net.fastpath``.
"""
