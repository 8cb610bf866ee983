#!/usr/bin/env node
import { Command } from "commander";

const program = new Command("migstream");
program.description("Encode, decode, inspect and ship live-migration streams of device state");
await program.parseAsync(process.argv);
