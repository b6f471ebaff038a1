"""The Modbus wire codec, the lowest layer of `drivers.modbus`. Pure, no I/O.

Contract: every `decode_*`/`split_*` function either returns a well-formed value or
raises `FrameError`; no other exception escapes, whatever the input bytes
(fuzzed in tests/test_modbus_frames.py). Encoders raise `ValueError` on values that
Modbus cannot carry (address above 0xFFFF, too many registers), which is a caller bug.

- `pdu`: the protocol data units, requests and responses, whatever the transport;
- `reply`: what a master makes of a response PDU: the values answering its
  request, or the device's refusal;
- `adu`: the PDU on a transport: MBAP (TCP) and RTU framing (address, CRC,
  frame lengths, the 3.5-character gap).

Functions covered: 1 read coils, 3 read holding registers, 4 read input registers,
5 write single coil, 6 write single register, 15 write multiple coils,
16 write multiple registers, and exception responses (function | 0x80).
References: "MODBUS Application Protocol Specification V1.1b3" (PDUs, exception
codes) and "MODBUS over Serial Line V1.02" (RTU framing, CRC, 3.5-character gap).
"""
