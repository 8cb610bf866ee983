// Several devices migrated together. With peer-to-peer DMA between them, no device may stop
// while another can still DMA into it, so every device first reaches a P2P state (quiesced
// for P2P) before any leaves the running states: the prepare step QEMU runs for VFIO devices.
import { MigrationError } from "../core/errors.js";
import type { MigrationDevice, Session } from "./v2/migration-device.js";
import { migrationPath, type MigrationState } from "./v2/states.js";

export interface DeviceGroupOptions {
  /**
   * Migrate several devices even if some lack P2P support. Only safe when the devices cannot
   * DMA to each other (P2P mappings disabled); the embedder takes that responsibility.
   */
  allowWithoutP2p?: boolean;
}

const RUNNING: ReadonlySet<MigrationState> = new Set(["RUNNING", "RUNNING_P2P", "PRE_COPY", "PRE_COPY_P2P"]);

export class DeviceGroup {
  readonly devices: readonly MigrationDevice[];

  constructor(devices: readonly MigrationDevice[], options: DeviceGroupOptions = {}) {
    if (devices.length === 0) throw new MigrationError("EINVAL", "a device group needs at least one device");
    if (new Set(devices).size !== devices.length) throw new MigrationError("EINVAL", "a device appears twice in the group");
    const lacking = devices.filter((d) => !d.features.p2p);
    if (devices.length > 1 && lacking.length > 0 && !options.allowWithoutP2p) {
      throw new MigrationError(
        "EINVAL",
        `refusing to migrate ${devices.length} devices together: ${lacking.map((d) => JSON.stringify(d.deviceId)).join(", ")} lack P2P support (set allowWithoutP2p if they cannot DMA to each other)`,
      );
    }
    this.devices = devices;
  }

  /**
   * Moves every device to `target`. When that stops devices, all P2P-capable running devices
   * are first quiesced into RUNNING_P2P / PRE_COPY_P2P; if any fails (a quiesce deadline, say),
   * those already moved go back to where they were and the error is thrown. When that starts
   * devices (RUNNING, PRE_COPY), stopped P2P-capable devices all reach RUNNING_P2P first.
   */
  async setState(target: MigrationState): Promise<(Session | undefined)[]> {
    // A request some device must refuse (an invalid or unsupported state, ERROR, a blocked arc)
    // is refused before anything moves: otherwise the prepare step below would leave every
    // device quiesced for nothing.
    for (const device of this.devices) migrationPath(device.state, target, device.features);
    if (!RUNNING.has(target)) {
      const moved: [MigrationDevice, MigrationState][] = [];
      try {
        for (const device of this.devices) {
          if (!device.features.p2p) continue;
          const from = device.state;
          const p2p = from === "PRE_COPY" ? "PRE_COPY_P2P" : from === "RUNNING" ? "RUNNING_P2P" : undefined;
          if (!p2p) continue;
          await device.setState(p2p);
          moved.push([device, from]);
        }
      } catch (error) {
        for (const [device, from] of moved.reverse()) await device.setState(from).catch(() => device.reset());
        throw error;
      }
    } else if (target === "RUNNING" || target === "PRE_COPY") {
      // The same rule when starting: a device that may do P2P DMA again must not be running
      // while a peer is still stopped (or resuming), so every stopped P2P-capable device first
      // reaches RUNNING_P2P (QEMU's prepare step runs in both directions). A failure here leaves
      // devices stopped or in RUNNING_P2P, neither of which initiates P2P DMA.
      for (const device of this.devices) {
        if (device.features.p2p && !RUNNING.has(device.state)) await device.setState("RUNNING_P2P");
      }
    }
    const sessions: (Session | undefined)[] = [];
    for (const device of this.devices) sessions.push(await device.setState(target));
    return sessions;
  }
}
