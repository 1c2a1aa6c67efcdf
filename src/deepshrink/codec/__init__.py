"""Codecs and the ``.dsz`` compressed model file: relative index, Huffman, ANS, container, save / read / load."""

from .ans import AnsTable, ans_decode, ans_encode
from .container import FORMAT, VERSION, Container, SectionWriter
from .decode import CompressedFile, SectionReader, read_compressed, read_compressed_bytes
from .encode import CompressionReport, save_compressed
from .huffman import HuffmanTable, huffman_decode, huffman_encode, huffman_lengths
from .load import load_compressed, load_compressed_with_meta
from .sparse import decode_positions, encode_positions, filler_code, mask_from_positions
from .stats import file_stats
from .stream import CODINGS, EncodedStream, decode_stream, encode_stream

__all__ = [
    "CODINGS",
    "FORMAT",
    "VERSION",
    "AnsTable",
    "CompressedFile",
    "CompressionReport",
    "Container",
    "EncodedStream",
    "HuffmanTable",
    "SectionReader",
    "SectionWriter",
    "ans_decode",
    "ans_encode",
    "decode_positions",
    "decode_stream",
    "encode_positions",
    "encode_stream",
    "file_stats",
    "filler_code",
    "huffman_decode",
    "huffman_encode",
    "huffman_lengths",
    "load_compressed",
    "load_compressed_with_meta",
    "mask_from_positions",
    "read_compressed",
    "read_compressed_bytes",
    "save_compressed",
]
