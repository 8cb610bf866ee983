// migstream/node: adapters that need Node (files, streams, TCP).
export {};
