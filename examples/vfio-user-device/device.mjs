// What a device author writes to serve a device over vfio-user: a MigrationDevice (the state
// migstream migrates), its reaction to the guest's register writes, and serveVfioUser().
//
// The device: BAR0 is a page of registers, BAR1 256 KiB of device memory. Writing a slot
// number n to register 0 (the doorbell) makes the device write a 16-byte completion record
// into guest memory by DMA, at the ring the guest put in register 1 (its IOVA, low 32 bits),
// and count it in register 2.
//
//   node examples/vfio-user-device/device.mjs <socket path>
//
// prints "listening on <path>" on stderr and serves until SIGINT or SIGTERM.
import { MigrationDevice } from "migstream";
import { serveVfioUser } from "migstream/node";

export const REGS = 0;
export const MEMORY = 1;
const DOORBELL = 0;
const RING = 4;
const COMPLETIONS = 8;

export async function serveDevice(path) {
  const device = new MigrationDevice({
    regions: [
      { name: "regs", size: 4096 },
      { name: "memory", size: 256 * 1024 },
    ],
    // Streams carry this id; a target serving another device model refuses them.
    deviceId: "example-ring-device/1",
  });
  const regs = () => new DataView(device.model.view(REGS).buffer, device.model.view(REGS).byteOffset, 4096);
  const server = await serveVfioUser(device, {
    path,
    pci: { vendorId: 0x1234, deviceId: 0x11e0, classCode: 0x058000 },
    // Called after the bytes landed in the register BAR; the write is answered once this is done.
    async onRegionWrite(region, offset, bytes) {
      if (region !== REGS || offset !== DOORBELL || bytes.length !== 4) return;
      const slot = regs().getUint32(DOORBELL, true);
      const record = new Uint8Array(16);
      const view = new DataView(record.buffer);
      view.setUint32(0, slot, true);
      view.setUint32(4, 0x600d, true); // status: done
      // DMA into guest memory: a DMA_WRITE message to the client (no fd can carry guest memory
      // to a Node process), recorded by DMA logging while the VMM tracks dirty pages.
      await server.dmaWrite(regs().getUint32(RING, true) + slot * 16, record);
      const count = new Uint8Array(4);
      new DataView(count.buffer).setUint32(0, regs().getUint32(COMPLETIONS, true) + 1, true);
      device.write(REGS, COMPLETIONS, count);
    },
  });
  return { device, server };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const path = process.argv[2];
  if (!path) {
    process.stderr.write("usage: node device.mjs <socket path>\n");
    process.exit(1);
  }
  const { server } = await serveDevice(path);
  for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => server.close().then(() => process.exit(0)));
  process.stderr.write(`listening on ${server.path}\n`);
}
