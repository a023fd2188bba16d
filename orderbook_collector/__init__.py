"""The recording process of orderbook.

- :mod:`.feed`: sans-I/O stream kinds, decoding and validation, fed literal frames.
- :mod:`.connection`: the I/O shell: WebSocket sessions, rotation, backoff.
- :mod:`.writer`: the one owner of the buffer's write connection, and the spill to disk.
- :mod:`.buffer`: the contract between the collector and the archive (imported by both).
"""
