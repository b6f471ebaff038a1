"""Electricity at run time: poll each room's meter, apply the rules, drive its breaker.

The modules, in the order a reading travels:
- `room`: a room's runtime (devices, the rules' state, what is known of the
  breaker) and its alarm device names;
- `poll`: each room's poll loop and rules step, and carrying an outcome out;
- `record`: an outcome committed in one store transaction (`store.rooms`);
- `breaker`: the breakers driven, read back and reconciled (`rules.breaker`);
- `curfew`: which rooms a curfew covers now;
- `view`: a room as `state.get` and the status show it;
- `service`: `PowerService`, the component: start, loops, center commands.
"""
