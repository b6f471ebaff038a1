"""The water service: showers and drinking water (its contract in `service.py`).

- `service`: `WaterService`, the component: points built, tasks run, taps dispatched;
- `point`: a point's run-time state (`PointRuntime`) and its device names;
- `point_devices`: a point's valve and flow meter, commanded and read, and their faults;
- `point_loop`: each point's loop: a session read, charged and ended; idle checks;
- `charging`: a session's money in the store, charged as it runs and at its end, once;
- `taps`: how a tap at a closed point is answered: a session started, or refused;
- `recovery`: valves closed and sessions ended at start (a crash's) and at shutdown.

The SQL is in gatewayd/store (`water_sessions`, `offline_spend`), the rules in
gatewayd/rules/water.py.
"""
