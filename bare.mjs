import dbus from 'dbus-next';
const bus = dbus.sessionBus({ busAddress: process.argv[2] });
bus.on('connect', async () => {
  bus.addMethodHandler((msg) => {
    if (msg.member !== 'TestMethod') return false;
    bus.send(dbus.Message.newMethodReturn(msg, 'b', [true]));
    return true;
  });
  await bus.requestName('org.example.bare', 4);
  console.log('READY');
});
