"""Wire format (``pinfer.proto``, generated ``pinfer_pb2*``) and the frame codec."""
